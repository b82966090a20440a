// node-postgres through pgtenant. Run by tests/drivers/test_node_postgres.py:
//   node scenarios.js SCENARIO
// with PGTENANT_PORT and PGTENANT_TOKEN_<TENANT> (acme, globex) in the environment.
// Prints one JSON object (what the scenario saw) on stdout; the Python test judges it.
// Exits non-zero with the error on stderr when the driver itself fails.
'use strict'

const { pipeline } = require('node:stream/promises')
const { Writable, Readable } = require('node:stream')
const pg = require('pg')
const { to: copyTo, from: copyFrom } = require('pg-copy-streams')

const TENANTS = ['acme', 'globex']
const WHO_AM_I =
  "SELECT current_setting('app.current_tenant') AS setting, " +
  "string_agg(DISTINCT tenant_id, ',') AS tenants, count(*)::int AS rows FROM items"

function config(tenant, extra = {}) {
  return {
    host: '127.0.0.1',
    port: Number(process.env.PGTENANT_PORT),
    user: 'node',
    password: process.env[`PGTENANT_TOKEN_${tenant.toUpperCase()}`],
    database: 'app',
    ssl: false,
    ...extra,
  }
}

async function connect(tenant, extra) {
  const client = new pg.Client(config(tenant, extra))
  await client.connect()
  return client
}

async function whoAmI(client) {
  return (await client.query(WHO_AM_I)).rows[0]
}

async function errorOf(promise) {
  try {
    await promise
  } catch (err) {
    return { code: err.code, message: err.message }
  }
  return null
}

const scenarios = {
  // Simple protocol (no values) and unnamed extended protocol (values), reads and writes.
  async isolation() {
    const clients = await Promise.all(TENANTS.map((t) => connect(t)))
    const out = {}
    try {
      for (const [i, tenant] of TENANTS.entries()) {
        const c = clients[i]
        await c.query("INSERT INTO items (name) VALUES ('node-simple')")
        await c.query('INSERT INTO items (name) VALUES ($1)', [`node-${tenant}`])
        const updated = await c.query("UPDATE items SET name = name || '!'")
        const foreign = await c.query('DELETE FROM items WHERE tenant_id <> $1', [tenant])
        const planted = await errorOf(
          c.query('INSERT INTO items (tenant_id, name) VALUES ($1, $2)', ['other', 'x']))
        out[tenant] = { updated: updated.rowCount, foreign: foreign.rowCount, planted }
      }
      for (const [i, tenant] of TENANTS.entries()) out[tenant].after = await whoAmI(clients[i])
    } finally {
      await Promise.all(clients.map((c) => c.end()))
    }
    return out
  },

  // Named prepared statements: every client uses the same names, interleaved.
  async named() {
    const order = [...TENANTS, ...TENANTS]
    const clients = await Promise.all(order.map((t) => connect(t)))
    const seen = order.map(() => [])
    try {
      for (let round = 0; round < 5; round++) {
        await Promise.all(clients.map(async (c, i) => {
          const res = await c.query({
            name: 'who',
            text: "SELECT current_setting('app.current_tenant') AS setting, tenant_id, " +
              '$1::int AS round FROM items ORDER BY id',
            values: [round],
          })
          const count = await c.query({
            name: 'count', text: 'SELECT count(*)::int AS n FROM items WHERE id > $1',
            values: [0],
          })
          seen[i].push({ rows: res.rows, count: count.rows[0].n })
        }))
      }
    } finally {
      await Promise.all(clients.map((c) => c.end()))
    }
    return order.map((tenant, i) => ({ tenant, seen: seen[i] }))
  },

  // pg's pipeline mode: many queries on the wire before the first reply.
  async pipeline() {
    const out = {}
    await Promise.all(TENANTS.map(async (tenant) => {
      const c = await connect(tenant, { pipeline: true })
      try {
        const queries = []
        for (let n = 0; n < 10; n++) {
          queries.push(c.query('INSERT INTO items (name) VALUES ($1) RETURNING tenant_id',
            [`piped-${n}`]))
        }
        queries.push(c.query(WHO_AM_I))
        const results = await Promise.all(queries)
        out[tenant] = {
          inserted: results.slice(0, -1).map((r) => r.rows[0].tenant_id),
          after: results.at(-1).rows[0],
        }
      } finally {
        await c.end()
      }
    }))
    return out
  },

  // pg.Pool: clients checked out and back in, some changing their session.
  async pool() {
    const out = {}
    await Promise.all(TENANTS.map(async (tenant) => {
      const pool = new pg.Pool(config(tenant, { max: 2 }))
      try {
        const seen = await Promise.all(Array.from({ length: 8 }, async (_, n) => {
          const c = await pool.connect()
          try {
            await c.query("SET application_name = 'pooled'")
            await c.query('INSERT INTO items (name) VALUES ($1)', [`pool-${n}`])
            return (await c.query("SELECT current_setting('app.current_tenant') AS s")).rows[0].s
          } finally {
            c.release()
          }
        }))
        out[tenant] = { seen, after: (await pool.query(WHO_AM_I)).rows[0] }
      } finally {
        await pool.end()
      }
    }))
    return out
  },

  // COPY TO through pg-copy-streams; COPY FROM into the RLS table (refused) and staged.
  async copy() {
    const c = await connect('globex')
    try {
      const chunks = []
      await pipeline(c.query(copyTo('COPY items (tenant_id, name) TO STDOUT')),
        new Writable({ write(chunk, _enc, done) { chunks.push(chunk); done() } }))
      const lines = Buffer.concat(chunks).toString().trim().split('\n')
      const rows = Array.from({ length: 25 }, (_, n) => `streamed-${n}\n`)
      const refused = await errorOf(
        pipeline(Readable.from(rows), c.query(copyFrom('COPY items (name) FROM STDIN'))))
      await c.query('BEGIN')
      await c.query('CREATE TEMP TABLE staging (name text) ON COMMIT DROP')
      await pipeline(Readable.from(rows), c.query(copyFrom('COPY staging FROM STDIN')))
      const loaded = await c.query('INSERT INTO items (name) SELECT name FROM staging')
      await c.query('COMMIT')
      return { lines, refused, loaded: loaded.rowCount, after: await whoAmI(c) }
    } finally {
      await c.end()
    }
  },

  // A CancelRequest from Client.cancel(), and statement_timeout as a connection parameter.
  async cancel() {
    const c = await connect('acme')
    const other = await connect('globex')
    try {
      const othersSleep = other.query('SELECT true AS ok FROM pg_sleep(1)')
      const started = Date.now()
      // cancel() needs the Query object itself (not the promise client.query returns).
      const sleep = new pg.Query('SELECT pg_sleep(20)')
      const sleeping = new Promise((resolve, reject) => {
        sleep.on('end', resolve)
        sleep.on('error', reject)
      })
      c.query(sleep)
      await new Promise((resolve) => setTimeout(resolve, 300))
      new pg.Client(config('acme')).cancel(c, sleep)
      const cancelled = await errorOf(sleeping)
      const cancelMs = Date.now() - started
      const afterCancel = await whoAmI(c)
      const othersResult = (await othersSleep).rows[0].ok

      const timed = await connect('acme', { statement_timeout: 300 })
      const timedStarted = Date.now()
      let timedOut
      try {
        timedOut = (await errorOf(timed.query('SELECT pg_sleep(20)'))) ?? { code: null }
        timedOut.ms = Date.now() - timedStarted
        timedOut.after = await whoAmI(timed)
      } finally {
        await timed.end()
      }
      return { cancelled, cancelMs, afterCancel, othersResult, timedOut }
    } finally {
      await Promise.all([c.end(), other.end()])
    }
  },
}

async function main() {
  const name = process.argv[2]
  if (!scenarios[name]) throw new Error(`unknown scenario ${name}`)
  process.stdout.write(JSON.stringify(await scenarios[name]()) + '\n')
}

main().catch((err) => {
  process.stderr.write(`${err.stack || err}\n`)
  process.exit(1)
})
