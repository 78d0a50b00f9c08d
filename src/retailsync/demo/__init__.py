"""The demo: seed a catalog, start the real API server, drive it with simulated web, mobile,
POS, warehouse and merchandiser clients over HTTP, then audit the stock and report.

- ``run``: the plan, the report, and the run from start to finish;
- ``server``: the API server as a child process;
- ``client``: an HTTP session per simulated client, and the request statistics;
- ``traffic``: what each kind of client does, and the ledger of what the server acknowledged.
"""
