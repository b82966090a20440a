// pgJDBC through pgtenant. Compiled and run by tests/drivers/test_jdbc.py:
//   java -cp DIR:postgresql.jar DriverScenarios SCENARIO
// with PGTENANT_PORT and PGTENANT_TOKEN_<TENANT> (acme, globex) in the environment.
// Prints what the scenario saw as `key=value` lines; the Python test judges them.
// A driver failure ends it with a stack trace and a non-zero exit.

import java.io.StringReader;
import java.io.StringWriter;
import java.sql.BatchUpdateException;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import org.postgresql.PGConnection;
import org.postgresql.PGStatement;
import org.postgresql.copy.CopyManager;

public class DriverScenarios {
    static final String[] TENANTS = {"acme", "globex"};
    static final String WHO_AM_I = "SELECT current_setting('app.current_tenant') || '|' || "
            + "coalesce(string_agg(DISTINCT tenant_id, ','), '') || '|' || count(*) FROM items";

    static Connection connect(String tenant, String extra) throws SQLException {
        String url = "jdbc:postgresql://127.0.0.1:" + System.getenv("PGTENANT_PORT")
                + "/app?sslmode=disable" + extra;
        return DriverManager.getConnection(url, "jdbc",
                System.getenv("PGTENANT_TOKEN_" + tenant.toUpperCase()));
    }

    static String whoAmI(Connection conn) throws SQLException {
        try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery(WHO_AM_I)) {
            rs.next();
            return rs.getString(1);
        }
    }

    static void out(String key, Object value) {
        System.out.println(key + "=" + value);
    }

    static String sqlState(ThrowingRunnable body) throws Exception {
        try {
            body.run();
        } catch (SQLException e) {
            return e.getSQLState();
        }
        return "none";
    }

    interface ThrowingRunnable {
        void run() throws Exception;
    }

    /** Simple statements and unnamed prepared statements, reads and writes, two tenants. */
    static void isolation() throws Exception {
        for (String tenant : TENANTS) {
            try (Connection conn = connect(tenant, "")) {
                try (Statement st = conn.createStatement()) {
                    st.executeUpdate("INSERT INTO items (name) VALUES ('jdbc-" + tenant + "')");
                    out(tenant + ".updated", st.executeUpdate("UPDATE items SET name = name || '!'"));
                    out(tenant + ".foreign",
                            st.executeUpdate("DELETE FROM items WHERE tenant_id <> '" + tenant + "'"));
                }
                out(tenant + ".planted", sqlState(() -> {
                    try (PreparedStatement ps = conn.prepareStatement(
                            "INSERT INTO items (tenant_id, name) VALUES (?, ?)")) {
                        ps.setString(1, "other");
                        ps.setString(2, "planted");
                        ps.executeUpdate();
                    }
                }));
                out(tenant + ".after", whoAmI(conn));
            }
        }
    }

    /** prepareThreshold=3: the 3rd execution switches to a named server statement (S_n). */
    static void prepared() throws Exception {
        List<Connection> conns = new ArrayList<>();
        List<PreparedStatement> statements = new ArrayList<>();
        for (String tenant : new String[] {"acme", "globex", "acme", "globex"}) {
            Connection conn = connect(tenant, "&prepareThreshold=3");
            conns.add(conn);
            statements.add(conn.prepareStatement(
                    "SELECT current_setting('app.current_tenant'), tenant_id, ?::int FROM items"));
        }
        try {
            for (int run = 0; run < 10; run++) {
                for (int i = 0; i < conns.size(); i++) {
                    PreparedStatement ps = statements.get(i);
                    ps.setInt(1, run);
                    StringBuilder seen = new StringBuilder();
                    try (ResultSet rs = ps.executeQuery()) {
                        while (rs.next()) {
                            seen.append(rs.getString(1)).append(':').append(rs.getString(2))
                                    .append(':').append(rs.getInt(3)).append(' ');
                        }
                    }
                    out("client" + i + ".run" + run, seen.toString().trim());
                    // Whether the *next* execution uses a named server statement.
                    out("client" + i + ".serverPrepared" + run,
                            ps.unwrap(PGStatement.class).isUseServerPrepare());
                }
            }
            for (int i = 0; i < conns.size(); i++) {
                out("client" + i + ".after", whoAmI(conns.get(i)));
            }
            // Other sessions' statements are not a tenant's to read: the statement policy
            // refuses pg_prepared_statements (42501) and the connection stays usable.
            try (Statement st = conns.get(0).createStatement();
                 ResultSet rs = st.executeQuery("SELECT count(*) FROM pg_prepared_statements")) {
                rs.next();
                out("client0.serverStatements", rs.getString(1));
            } catch (SQLException e) {
                out("client0.serverStatements", e.getSQLState());
            }
            out("client0.afterRefusal", whoAmI(conns.get(0)));
        } finally {
            for (Connection conn : conns) {
                conn.close();
            }
        }
    }

    /** addBatch/executeBatch: many Bind/Execute pairs before one Sync. */
    static void batch() throws Exception {
        try (Connection conn = connect("globex", "&prepareThreshold=1")) {
            try (PreparedStatement ps = conn.prepareStatement("INSERT INTO items (name) VALUES (?)")) {
                for (int n = 0; n < 20; n++) {
                    ps.setString(1, "batched-" + n);
                    ps.addBatch();
                }
                out("inserted", Arrays.stream(ps.executeBatch()).sum());
            }
            try (PreparedStatement ps = conn.prepareStatement(
                    "UPDATE items SET name = name || '!' WHERE tenant_id = ?")) {
                for (String tenant : TENANTS) {
                    ps.setString(1, tenant);
                    ps.addBatch();
                }
                out("updated", Arrays.toString(ps.executeBatch()));
            }
            try (Statement st = conn.createStatement()) {
                st.addBatch("INSERT INTO items (name) VALUES ('in-failed-batch')");
                st.addBatch("SELECT 1 / 0");
                st.executeBatch();
                out("failedBatch", "none");
            } catch (BatchUpdateException e) {
                out("failedBatch", e.getSQLState() + (e.getNextException() != null
                        ? "/" + e.getNextException().getSQLState() : ""));
            }
            out("after", whoAmI(conn));
        }
    }

    /** setFetchSize inside a transaction: one portal, Execute with a row limit, repeatedly. */
    static void fetchSize() throws Exception {
        try (Connection conn = connect("acme", ""); Connection other = connect("globex", "")) {
            conn.setAutoCommit(false);
            int rows = 0;
            String tenants = "";
            try (Statement st = conn.createStatement()) {
                st.setFetchSize(4);
                try (ResultSet rs = st.executeQuery(
                        "SELECT tenant_id FROM items, generate_series(1, 5) ORDER BY id")) {
                    while (rs.next()) {
                        rows++;
                        if (!tenants.contains(rs.getString(1))) {
                            tenants += rs.getString(1);
                        }
                        if (rows % 4 == 1) {
                            out("other.between" + rows, whoAmI(other));
                        }
                    }
                }
            }
            conn.commit();
            out("rows", rows);
            out("tenants", tenants);
            out("after", whoAmI(conn));
        }
    }

    /** CopyManager: COPY TO; COPY FROM into the RLS table (refused) and through a staging table. */
    static void copy() throws Exception {
        try (Connection conn = connect("acme", "")) {
            CopyManager copy = conn.unwrap(PGConnection.class).getCopyAPI();
            StringWriter sink = new StringWriter();
            out("copiedOut", copy.copyOut("COPY items (tenant_id, name) TO STDOUT", sink));
            out("text", sink.toString().trim().replace("\t", ":").replace("\n", ","));
            StringBuilder rows = new StringBuilder();
            for (int n = 0; n < 40; n++) {
                rows.append("copied-").append(n).append('\n');
            }
            out("refused", sqlState(() ->
                    copy.copyIn("COPY items (name) FROM STDIN", new StringReader(rows.toString()))));
            conn.setAutoCommit(false);
            try (Statement st = conn.createStatement()) {
                st.execute("CREATE TEMP TABLE staging (name text) ON COMMIT DROP");
                out("copiedIn", copy.copyIn("COPY staging FROM STDIN", new StringReader(rows.toString())));
                out("loaded", st.executeUpdate("INSERT INTO items (name) SELECT name FROM staging"));
            }
            conn.commit();
            conn.setAutoCommit(true);
            out("after", whoAmI(conn));
        }
    }

    /** Statement.cancel() from another thread, and setQueryTimeout (a cancel on a timer). */
    static void cancel() throws Exception {
        ExecutorService pool = Executors.newFixedThreadPool(2);
        try (Connection conn = connect("acme", ""); Connection other = connect("globex", "")) {
            Future<String> othersSleep = pool.submit(() -> {
                try (Statement st = other.createStatement();
                     ResultSet rs = st.executeQuery("SELECT 'slept' FROM pg_sleep(1)")) {
                    rs.next();
                    return rs.getString(1);
                }
            });
            long started = System.nanoTime();
            try (Statement st = conn.createStatement()) {
                CompletableFuture<Void> canceller = CompletableFuture.runAsync(() -> {
                    try {
                        Thread.sleep(300);
                        st.cancel();
                    } catch (Exception e) {
                        throw new RuntimeException(e);
                    }
                }, pool);
                out("cancelled", sqlState(() -> st.executeQuery("SELECT pg_sleep(20)")));
                canceller.join();
            }
            out("cancelMs", (System.nanoTime() - started) / 1_000_000);
            out("afterCancel", whoAmI(conn));
            out("other", othersSleep.get());
            started = System.nanoTime();
            try (Statement st = conn.createStatement()) {
                st.setQueryTimeout(1);
                out("timedOut", sqlState(() -> st.executeQuery("SELECT pg_sleep(20)")));
            }
            out("timeoutMs", (System.nanoTime() - started) / 1_000_000);
            out("afterTimeout", whoAmI(conn));
        } finally {
            pool.shutdownNow();
        }
    }

    public static void main(String[] args) throws Exception {
        switch (args[0]) {
            case "isolation" -> isolation();
            case "prepared" -> prepared();
            case "batch" -> batch();
            case "fetchSize" -> fetchSize();
            case "copy" -> copy();
            case "cancel" -> cancel();
            default -> throw new IllegalArgumentException("unknown scenario " + args[0]);
        }
    }
}
