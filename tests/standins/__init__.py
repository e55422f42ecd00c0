"""Local stand-ins for external services, for tests that must not leave 127.0.0.1.

- ``daytona_server``    a Daytona control plane + toolbox that runs code in temp directories
- ``conftest_daytona``  the ``daytona_standin`` pytest fixture
"""
