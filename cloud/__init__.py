"""The cloud side of fieldlink: the ingester (MQTT → InfluxDB) and the query tool.

Entry points: :func:`cloud.ingester.run_ingester`, :func:`config.cloud.load_cloud_config`,
:func:`config.cloud.cloud_json_schema` and :func:`cloud.cli.register`. See ``cloud/README.md``.
"""
