"""Root conftest: shared fixture plugins every test directory can use."""

pytest_plugins = ["tests.lab_fixtures"]
