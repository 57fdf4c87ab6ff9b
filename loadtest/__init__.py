"""The load generator that measures wsgateway against its ceiling and its peers, side by side.

Run ``python -m loadtest SCENARIO --target TARGET`` (see ``loadtest/README.md``). The package
is a manual instrument plus a smoke run in the test suite; nothing in ``wsgateway`` imports it.
"""

__all__: list[str] = []
