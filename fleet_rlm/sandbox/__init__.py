"""Sandboxes: where RLM-written code runs, and the only bridge from it back to the host.

- ``protocol``     the ``SandboxProvider`` / ``Sandbox`` protocols and ``ExecResult``
- ``limits``       the resource limits of a sandbox, from settings
- ``runner``       the script that runs inside a local sandbox process (stdlib only)
- ``local``        the local provider: one confined Python process per sandbox
- ``daytona``      the Daytona provider, through the real ``daytona`` SDK
- ``pool``         the ``SandboxPool`` actor: create, lease, reuse, health-check, reap
- ``interpreter``  a DSPy ``CodeInterpreter`` that executes through the pool
- ``smoke``        ``fleet-rlm daytona-smoke``
"""
