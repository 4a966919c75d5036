"""Imported first by the workers' fork server (``forkserver.WORKER_PRELOAD``): a Ctrl-C while it imports the rest
ends it at once and quietly (the command reports the interruption) rather than with a traceback from the middle
of an import. It starts with Ctrl-C ignored (``forkserver.worker_context``): one that comes while its interpreter
starts, before this handler is set, is lost, and it ends when its imports do (the command is gone by then). Its
workers start with this handler until they set their own."""

import os
import signal

signal.signal(signal.SIGINT, lambda number, frame: os._exit(130))
