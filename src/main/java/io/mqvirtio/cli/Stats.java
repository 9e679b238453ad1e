package io.mqvirtio.cli;

import java.io.IOException;
import java.io.PrintStream;
import java.net.InetSocketAddress;
import java.nio.file.Path;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.net.http.HttpTimeoutException;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.time.LocalTime;
import java.time.format.DateTimeFormatter;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import picocli.CommandLine.Option;

/**
 * {@code mqvirtio stats --from ADDR:PORT [--watch S [--count N]]}: reads a running {@code serve}'s {@code /stats}
 * and prints the per-queue table; with {@code --watch}, every S seconds the rates since the previous sample.
 */
final class Stats {
    private static final DateTimeFormatter CLOCK = DateTimeFormatter.ofPattern("HH:mm:ss");

    private Stats() {}

    /** What one GET /stats returned. */
    record Sample(long uptimeMillis, List<DeviceStats> devices) {
        static Sample parse(String body) {
            Map<?, ?> m = DeviceStats.map(Json.parse(body), "the reply");
            List<DeviceStats> d = new ArrayList<>();
            for (Object o : DeviceStats.list(m.get("devices"), "devices")) {
                d.add(DeviceStats.fromJson(o));
            }
            return new Sample(DeviceStats.number(m, "uptime_ms"), List.copyOf(d));
        }
    }

    @picocli.CommandLine.Command(name = "stats", mixinStandardHelpOptions = true, versionProvider = Main.Version.class,
            sortOptions = false,
            description = "Print a running serve's per-queue counters (read from its --metrics endpoint's /stats).")
    static final class Command extends Streams implements java.util.concurrent.Callable<Integer> {
        @Option(names = "--from", paramLabel = "ADDR:PORT", required = true,
                description = "the address given to serve --metrics")
        String from;

        @Option(names = "--watch", paramLabel = "S",
                description = "every S seconds, print per-queue rates (packets/s, Mbit/s, drops/s, ...)")
        Double watch;

        @Option(names = "--count", paramLabel = "N", description = "with --watch: stop after N samples")
        Integer count;

        @Option(names = "--live", description = "with --watch: one screen redrawn each interval, a line per queue pair "
                + "(the default when standard output is a terminal; else a table per interval, for logs)")
        boolean live;

        @Option(names = "--plot", paramLabel = "FILE.png", description = "draw packets/s of every queue over the last "
                + "minute into FILE.png: with --watch, redrawn after each sample; alone, after a minute of samples "
                + "every second")
        Path plot;

        @Override
        public Integer call() throws InterruptedException {
            return run(this, out, err);
        }
    }

    static int run(Command a, PrintStream out, PrintStream err) throws InterruptedException {
        InetSocketAddress at = MetricsServer.address("from", a.from);
        double watch = a.watch == null ? 0 : Check.range("--watch", a.watch, 0.1, 86400);
        int count = a.count == null ? 0 : Check.range("--count", a.count, 1, Integer.MAX_VALUE);
        if (a.count != null && watch == 0 && a.plot == null) {
            throw new UsageException("--count needs --watch S");
        }
        if (a.live && watch == 0) {
            throw new UsageException("--live needs --watch S");
        }
        boolean plotOnly = a.plot != null && watch == 0;
        if (plotOnly) {
            watch = 1;
            count = count == 0 ? (int) StatsPlot.WINDOW_SECONDS : count;
        }
        boolean terminal = out == System.out && System.console() != null && System.console().isTerminal();
        boolean live = !plotOnly && (a.live || terminal);
        int[] size = live ? terminalSize() : new int[] {80, 24};
        URI uri = URI.create("http://" + MetricsServer.hostPort(at) + "/stats");
        HttpClient client = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(5)).build();
        try (client) {
            Sample prev = fetch(client, uri);
            List<Sample> window = new ArrayList<>(List.of(prev));
            if (plotOnly) {
                err.printf("mqvirtio: stats: sampling every second for %d s, then drawing %s%n", count, a.plot);
            } else if (!live) {
                printTotals(prev, out);
            }
            if (watch == 0) {
                return 0;
            }
            for (int n = 0; count == 0 || n < count; n++) {
                Thread.sleep((long) (watch * 1000));
                Sample now = fetch(client, uri);
                if (live) {
                    out.print((terminal ? StatsView.CLEAR : "") + StatsView.frame(prev, now, MetricsServer.hostPort(at),
                            size[0], size[1]));
                    out.flush();
                } else if (!plotOnly) {
                    printRates(prev, now, out);
                }
                window.add(now);
                StatsPlot.trim(window);
                if (a.plot != null && (!plotOnly || n == count - 1)) {
                    StatsPlot.write(window, LocalTime.now().format(CLOCK), a.plot);
                }
                prev = now;
            }
            if (a.plot != null) {
                err.println("mqvirtio: stats: wrote " + a.plot);
            }
            return 0;
        } catch (IOException e) {
            err.println("mqvirtio: stats: cannot read " + uri + " or write the plot: " + why(e));
            return 1;
        } catch (IllegalArgumentException e) {
            err.println("mqvirtio: stats: " + uri + " did not answer as mqvirtio serve does: " + e.getMessage());
            return 1;
        }
    }

    /**
     * What went wrong, in words: the first message along the causes (the JDK's HTTP client throws a ConnectException
     * without one, its cause says "Connection refused"), else the kind of failure.
     */
    static String why(Throwable e) {
        for (Throwable t = e; t != null; t = t.getCause()) {
            if (t.getMessage() != null && !t.getMessage().isBlank()) {
                return t.getMessage();
            }
        }
        return e instanceof java.net.ConnectException ? "cannot connect (nothing accepts connections there)"
                : e.getClass().getSimpleName();
    }

    /** The terminal's columns and rows: $COLUMNS/$LINES, else stty's answer, else 80 x 24. */
    static int[] terminalSize() {
        try {
            return new int[] {Integer.parseInt(System.getenv("COLUMNS")), Integer.parseInt(System.getenv("LINES"))};
        } catch (RuntimeException e) {
            // not exported (bash keeps them to itself): ask the terminal
        }
        try {
            Process p = new ProcessBuilder("stty", "size").redirectInput(new java.io.File("/dev/tty"))
                    .redirectError(ProcessBuilder.Redirect.DISCARD).start();
            String[] rc = new String(p.getInputStream().readAllBytes()).trim().split("\\s+");
            if (p.waitFor(2, java.util.concurrent.TimeUnit.SECONDS) && rc.length == 2) {
                return new int[] {Integer.parseInt(rc[1]), Integer.parseInt(rc[0])};
            }
        } catch (IOException | RuntimeException e) {
            // no terminal to ask
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
        return new int[] {80, 24};
    }

    /** The longest /stats reply read: the longest document {@link Json} parses. */
    static final int MAX_REPLY_BYTES = Json.MAX_CHARS;
    /** The time one /stats exchange may take, from the request to the reply's last byte. */
    static final Duration TIMEOUT = Duration.ofSeconds(5);

    static Sample fetch(HttpClient client, URI uri) throws IOException, InterruptedException {
        return fetch(client, uri, TIMEOUT);
    }

    /**
     * GET {@code uri}, bounded in time and size whatever answers there: the request's own timeout ends with the
     * reply's head, so a server that then trickles its body, or never ends it, would hold the client for good; the
     * whole exchange must end within {@code timeout} (then it is cancelled) and the body within
     * {@link #MAX_REPLY_BYTES} (the JDK's {@code BodyHandlers.limiting}: an IOException, "body exceeds capacity", as
     * soon as it is longer, and the exchange cancelled; {@code ofString} kept every byte until the server closed, and
     * an endless body took the client's heap: its HTTP selector thread died of OutOfMemoryError within 3 s with 256 MiB).
     */
    static Sample fetch(HttpClient client, URI uri, Duration timeout) throws IOException, InterruptedException {
        HttpRequest req = HttpRequest.newBuilder(uri).timeout(timeout).GET().build();
        CompletableFuture<HttpResponse<byte[]>> f = client.sendAsync(req,
                HttpResponse.BodyHandlers.limiting(HttpResponse.BodyHandlers.ofByteArray(), MAX_REPLY_BYTES));
        HttpResponse<byte[]> r;
        try {
            r = f.get(timeout.toMillis(), TimeUnit.MILLISECONDS);
        } catch (TimeoutException e) {
            throw new HttpTimeoutException("no whole reply within " + timeout.toMillis() + " ms");
        } catch (ExecutionException e) {
            Throwable c = e.getCause();
            throw c instanceof IOException io ? io : new IOException(c.getMessage() == null ? c.toString() : c.getMessage(), c);
        } finally {
            f.cancel(true); // ends an exchange still under way (a no-op once it is done)
        }
        if (r.statusCode() != 200) {
            throw new IOException("HTTP " + r.statusCode());
        }
        return Sample.parse(new String(r.body(), StandardCharsets.UTF_8));
    }

    static String header(DeviceStats d) {
        return d.name() + ": socket " + d.socket() + ", " + d.backend() + ", " + d.pairs() + " queue pairs, frontend "
                + (d.connected() ? "connected" : "not connected");
    }

    /** The counters as they stand: one row per queue and a total. */
    static void printTotals(Sample s, PrintStream out) {
        StringBuilder b = new StringBuilder();
        for (DeviceStats d : s.devices()) {
            b.append(header(d)).append('\n');
            b.append(String.format("%-6s %14s %16s %10s %10s %12s %12s%n", "queue", "packets", "bytes", "drops", "errors",
                    "kicks", "notifies"));
            long[] sum = new long[6];
            for (DeviceStats.Queue q : d.queues()) {
                long[] v = values(q);
                for (int k = 0; k < 6; k++) {
                    sum[k] += v[k];
                }
                b.append(String.format("%-6s %14d %16d %10d %10d %12d %12d%n", q.label(), v[0], v[1], v[2], v[3], v[4], v[5]));
            }
            b.append(String.format("%-6s %14d %16d %10d %10d %12d %12d%n", "total", sum[0], sum[1], sum[2], sum[3], sum[4],
                    sum[5]));
            for (DeviceStats.Capture c : d.captures()) {
                b.append(String.format("capture qp%d: %d frames written, %d dropped%n", c.pair(), c.frames(), c.dropped()));
            }
        }
        out.print(b);
        out.flush();
    }

    /** Per-second rates between two samples, per queue, with a total; a restarted server shows its totals instead. */
    static void printRates(Sample prev, Sample now, PrintStream out) {
        double secs = (now.uptimeMillis() - prev.uptimeMillis()) / 1000.0;
        Map<String, DeviceStats> before = new HashMap<>();
        prev.devices().forEach(d -> before.put(d.name(), d));
        StringBuilder b = new StringBuilder();
        for (DeviceStats d : now.devices()) {
            double[][] rates = queueRates(before.get(d.name()), d, secs);
            if (rates == null) {
                out.print(b);
                b.setLength(0);
                out.println(LocalTime.now().format(CLOCK) + " " + d.name() + ": counters restarted; totals:");
                printTotals(new Sample(now.uptimeMillis(), List.of(d)), out);
                continue;
            }
            b.append(String.format("%s %s over %.2f s (frontend %s)%n", LocalTime.now().format(CLOCK), d.name(), secs,
                    d.connected() ? "connected" : "not connected"));
            b.append(String.format("%-6s %12s %10s %10s %10s %10s %10s%n", "queue", "pps", "Mbit/s", "drops/s", "errors/s",
                    "kicks/s", "notifies/s"));
            double[] sum = new double[RATES];
            for (int i = 0; i < d.queues().size(); i++) {
                for (int k = 0; k < RATES; k++) {
                    sum[k] += rates[i][k];
                }
                b.append(row(d.queues().get(i).label(), rates[i]));
            }
            b.append(row("total", sum));
        }
        out.print(b);
        out.flush();
    }

    private static String row(String label, double[] r) {
        return String.format("%-6s %12.0f %10.2f %10.0f %10.0f %10.0f %10.0f%n", label, r[0], r[1] * 8 / 1e6, r[2], r[3],
                r[4], r[5]);
    }

    /** Columns of {@link #queueRates}: packets, bytes, drops, errors, kicks, notifications per second. */
    static final int RATES = 6;

    /**
     * Each queue's per-second rates from {@code prev} to {@code now} (one device's two samples, {@code seconds} apart),
     * {@link #RATES} columns in the order of {@link #values}; null when there is no earlier sample, no time between
     * them, another set of queues, or a counter that went back (a restarted serve). The one place the CLI's views
     * (the table, the live screen, the plot) get rates from.
     */
    static double[][] queueRates(DeviceStats prev, DeviceStats now, double seconds) {
        if (prev == null || seconds <= 0 || prev.queues().size() != now.queues().size()) {
            return null;
        }
        double[][] r = new double[now.queues().size()][RATES];
        for (int i = 0; i < r.length; i++) {
            long[] v = values(now.queues().get(i));
            long[] w = values(prev.queues().get(i));
            for (int k = 0; k < RATES; k++) {
                if (v[k] < w[k]) {
                    return null;
                }
                r[i][k] = (v[k] - w[k]) / seconds;
            }
        }
        return r;
    }

    private static long[] values(DeviceStats.Queue q) {
        return new long[] {q.packets(), q.bytes(), q.drops(), q.errors(), q.kicks(), q.notifications()};
    }
}
