"""sortie's local AWS endpoint for tests: moto, with SSM Run Command that really runs.

Start it with ``scripts/aws-test-endpoint --port PORT`` (see docs/TEST_ENDPOINT.md).
"""
