"""HTTP/1.1 on a relayed connection: ``observe`` follows its requests and responses."""
