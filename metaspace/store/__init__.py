"""The only package that talks to PostgreSQL (the only one that imports psycopg): connection, embedded
server, migrations, and the tables and SQL functions. It hands plain data (rows, arrays, state dicts) up."""
