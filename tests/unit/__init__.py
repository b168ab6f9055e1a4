# A package, so that these modules are imported as unit.test_* and their names
# cannot clash with test modules of the same name under tests/e2e.
