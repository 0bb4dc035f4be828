"""The huey app the consumer process imports (``bench.huey_main.huey``)."""

from bench.peers import huey_app

huey, noop = huey_app()
