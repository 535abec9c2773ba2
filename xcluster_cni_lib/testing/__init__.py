"""Helpers for tests, in this project and in users' own harnesses: network namespaces
(``netns``) and in-memory fakes of the I/O interfaces (``fakes``)."""
