"""The Procrastinate app the worker process imports (``bench.procrastinate_main.app``)."""

from bench.peers import procrastinate_app

app = procrastinate_app()
