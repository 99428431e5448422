"""Every exit status supervise's processes and commands use, defined once (see the README).

The master and the commands: 0 clean, 1 failure, 2 bad usage or configuration, 3 crash loop,
4 unclean stop, 5 no master to address (the control verbs). A worker's status tells the
master why it ended; 78 (sysexits' EX_CONFIG) means its service cannot be loaded or started
as configured, and the master stops rather than loop.
"""

OK = 0
FAILED = 1  # the master failed; a command's remote error, timeout or unreachable broker
USAGE = 2  # bad usage or configuration, or the service cannot be loaded
CRASH_LOOP = 3
UNCLEAN_STOP = 4  # a worker was killed at the drain deadline or failed its stop
NOT_RUNNING = 5  # a control verb (`supervise status`) found no running master
WORKER_DRAIN_TIMEOUT = 4  # a worker's own drain deadline passed
WORKER_LOAD_FAILED = 78
