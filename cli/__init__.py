"""cli: the ``fsd`` command line, a thin skin over featstore and distill (no library package imports it)."""
