"""The audit trail: every decision as one hash-chained JSON line.

Owns the writer (`writer`: emit/warn, file rotation, the chain), the schema (`events`), the
readers (`reader`, `verify`) and what is made from a trail afterwards (`postmortem`,
`report_html`, `replay`). May import model, policy and planning (replay re-plans); never the
store, the hypervisors, the control loops or the lab. See docs/audit.md.
"""
