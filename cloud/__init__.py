"""The cloud side of fieldlink: the ingester (MQTT → InfluxDB) and the query tool.

Entry points: :func:`cloud.ingester.run_ingester`, :func:`cloud.config.load_cloud_config`,
:func:`cloud.config.cloud_json_schema` and :func:`cloud.cli.register`. See ``cloud/README.md``.
"""
