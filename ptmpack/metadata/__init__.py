"""Package metadata: the JSON Schemas of managementinfo/technicalinfo, templates, validation, the clock."""
