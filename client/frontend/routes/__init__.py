"""HTTP routers: parse the schema, call the generation client, map errors; nothing else."""
