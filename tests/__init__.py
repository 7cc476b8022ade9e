"""The test suite: unit, property (hypothesis), attack catalogue and end-to-end tests."""
