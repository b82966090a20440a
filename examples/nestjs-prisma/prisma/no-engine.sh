#!/bin/sh
# Stands in for Prisma's Rust engines where binaries.prisma.sh cannot be reached (offline
# builds, this repository's CI). `prisma generate` only checks that the engine files
# exist before it runs: the client it writes (engineType "client") needs no engine, and
# this example applies its schema with SQL, not `prisma migrate`. Used through
#   PRISMA_SCHEMA_ENGINE_BINARY=prisma/no-engine.sh PRISMA_QUERY_ENGINE_LIBRARY=prisma/no-engine.sh
# If anything does run it, it says so and fails.
echo "prisma/no-engine.sh: Prisma's Rust engines are not installed here (see the comment in this file)" >&2
exit 1
