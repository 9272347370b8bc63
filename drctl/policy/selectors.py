"""Host and VM selectors in a policy, read into drctl.model.cluster's HostSelector / VMSelector.

    hosts: {names: ["hv-*"], labels: {role: compute}, not: {labels: {role: spare}}}
    vms:   {names: ["db-*"], tags: [prod], min_priority: 10}

An omitted or empty selector matches everything.
"""
from __future__ import annotations

import yaml

from drctl.model.cluster import HostSelector, VMSelector
from drctl.policy.reader import Invalid, Reader, is_null, join

HOST_KEYS = ("names", "labels", "not")
VM_KEYS = ("names", "tags", "min_priority")


def host_selector(r: Reader, node: yaml.Node | None, path: str) -> HostSelector:
    if node is None or is_null(node):
        return HostSelector()
    fields = r.mapping(node, path, HOST_KEYS)
    names = _names(r, fields.get("names"), join(path, "names"))
    labels = _labels(r, fields.get("labels"), join(path, "labels"))
    exclude = None
    if "not" in fields:
        exclude = r.attempt(lambda: host_selector(r, fields["not"], join(path, "not")), None)
        if exclude == HostSelector():
            raise r.fail(fields["not"], join(path, "not"), "an empty 'not' would exclude every host")
    return HostSelector(names=names, labels=labels, exclude=exclude)


def vm_selector(r: Reader, node: yaml.Node | None, path: str) -> VMSelector:
    if node is None or is_null(node):
        return VMSelector()
    fields = r.mapping(node, path, VM_KEYS)
    names = _names(r, fields.get("names"), join(path, "names"))
    tags: frozenset[str] = frozenset()
    if "tags" in fields:
        tags = frozenset(r.each(fields["tags"], join(path, "tags"), r.word, scalar_ok=True))
    min_priority = None
    if "min_priority" in fields:
        min_priority = r.attempt(
            lambda: r.integer(fields["min_priority"], join(path, "min_priority"),
                              minimum=-1_000_000), None)
    return VMSelector(names=names, tags=tags, min_priority=min_priority)


def _names(r: Reader, node: yaml.Node | None, path: str) -> tuple[str, ...]:
    """Name globs; a single string stands for a list of one."""
    if node is None:
        return ()
    names = tuple(r.each(node, path, r.word, scalar_ok=True))
    if not names:
        raise r.fail(node, path, "an empty list matches nothing: leave 'names' out to match all")
    return names


def _labels(r: Reader, node: yaml.Node | None, path: str) -> dict[str, str]:
    if node is None:
        return {}
    if not isinstance(node, yaml.MappingNode):
        raise r.fail(node, path, "expected a mapping of label: value")
    labels: dict[str, str] = {}
    for key_node, value in node.value:
        try:
            key = r.word(key_node, path)
            # label values are strings in the inventory; `rack: 1` means "1"
            labels[key] = r.string(value, join(path, key))
        except Invalid:
            continue
    return labels
