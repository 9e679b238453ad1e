package io.mqvirtio.cli;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import io.mqvirtio.backend.LoopbackBackend;
import io.mqvirtio.net.NetDevice;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.io.PrintStream;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicLong;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * The metrics endpoint in-process, on a real net device (loopback backend, no frontend) and a real HTTP server on an
 * ephemeral loopback port (127.0.0.1 of this process only): both formats, the loopback-only rule, {@code mqvirtio
 * stats} reading it, the bounds on what a client may hold (stalled, trickling and oversized request heads, over raw
 * sockets) and the Host check against DNS rebinding. Traffic through the counters is checked by the peer tests
 * (QEMU, testpmd).
 */
@Timeout(60)
class MetricsServerTest {
    @org.junit.jupiter.api.io.TempDir
    java.nio.file.Path dir;

    static final int PAIRS = 3;
    /** A Prometheus sample line: name, labels, value. */
    static final Pattern SAMPLE = Pattern.compile("([a-z_]+)\\{((?:[a-z_]+=\"(?:[^\"\\\\]|\\\\.)*\",?)*)\\} (-?[0-9]+(?:\\.[0-9]+)?(?:E[0-9]+)?)");

    record Out(int rc, String out, String err) {}

    static Out main(String... argv) {
        ByteArrayOutputStream o = new ByteArrayOutputStream();
        ByteArrayOutputStream e = new ByteArrayOutputStream();
        int rc = Main.run(argv, new PrintStream(o, true, StandardCharsets.UTF_8), new PrintStream(e, true, StandardCharsets.UTF_8));
        return new Out(rc, o.toString(StandardCharsets.UTF_8), e.toString(StandardCharsets.UTF_8));
    }

    @Test
    void servesPrometheusAndJsonForEveryQueue() throws Exception {
        AtomicBoolean connected = new AtomicBoolean();
        String name = "vm\"0\\x"; // a quote and a backslash: label values must escape them
        try (NetDevice dev = new NetDevice(NetDevice.Config.of(name, PAIRS), new LoopbackBackend(PAIRS, 1500));
             MetricsServer m = MetricsServer.start(new InetSocketAddress("127.0.0.1", 0),
                     List.of(new MetricsServer.Source(dev, "/run/vm0.sock", "loopback", connected::get)))) {
            int port = m.address().getPort();
            assertThat(port).isPositive();

            Launcher.Http prom = Launcher.get("127.0.0.1", port, "/metrics");
            assertThat(prom.status()).isEqualTo(200);
            assertThat(prom.contentType()).isEqualTo("text/plain; version=0.0.4; charset=utf-8");
            List<String> families = new ArrayList<>();
            int samples = 0;
            String declared = null;
            for (String line : prom.body().split("\n")) {
                if (line.startsWith("# TYPE ")) {
                    declared = line.split(" ")[2];
                    families.add(declared);
                    continue;
                }
                if (line.startsWith("# HELP ") || !line.startsWith("mqvirtio_")) {
                    continue; // the JVM's own families: checked below
                }
                Matcher s = SAMPLE.matcher(line);
                assertThat(s.matches()).as("a valid sample line: %s", line).isTrue();
                assertThat(s.group(1)).as("sample of the family declared above it").isEqualTo(declared);
                assertThat(s.group(2)).contains("device=\"vm\\\"0\\\\x\"");
                samples++;
            }
            for (String f : List.of("packets", "bytes", "drops", "errors", "kicks", "notifications")) {
                String family = "mqvirtio_queue_" + f + "_total";
                assertThat(families).contains(family);
                for (int q = 0; q < PAIRS; q++) {
                    for (String dir : List.of("rx", "tx")) {
                        assertThat(prom.body()).contains(family + "{device=\"vm\\\"0\\\\x\",direction=\"" + dir
                                + "\",queue=\"" + q + "\"} 0.0\n");
                    }
                }
            }
            assertThat(samples).isEqualTo(6 * 2 * PAIRS + 6);
            assertThat(prom.body()).contains("mqvirtio_device_queue_pairs{device=\"vm\\\"0\\\\x\"} 3.0\n")
                    .contains("mqvirtio_frontend_connected{device=\"vm\\\"0\\\\x\"} 0.0\n")
                    .contains("mqvirtio_device_dead{device=\"vm\\\"0\\\\x\"} 0.0\n")
                    .contains("mqvirtio_device_logging{device=\"vm\\\"0\\\\x\"} 0.0\n")
                    .contains("mqvirtio_device_dirty_pages_total{device=\"vm\\\"0\\\\x\"} 0.0\n")
                    .contains("mqvirtio_device_info{backend=\"loopback\",device=\"vm\\\"0\\\\x\",socket=\"/run/vm0.sock\"} 1\n");
            // the JVM's own, from the client library's JVM instrumentation
            assertThat(families).contains("jvm_memory_used_bytes", "jvm_threads_current", "jvm_gc_collection_seconds",
                    "process_cpu_seconds_total");

            connected.set(true);
            Launcher.Http stats = Launcher.get("127.0.0.1", port, "/stats");
            assertThat(stats.status()).isEqualTo(200);
            assertThat(stats.contentType()).isEqualTo("application/json");
            Stats.Sample sample = Stats.Sample.parse(stats.body());
            assertThat(sample.uptimeMillis()).isNotNegative();
            assertThat(sample.devices()).hasSize(1);
            DeviceStats d = sample.devices().getFirst();
            assertThat(d.name()).isEqualTo(name);
            assertThat(d.socket()).isEqualTo("/run/vm0.sock");
            assertThat(d.pairs()).isEqualTo(PAIRS);
            assertThat(d.connected()).isTrue();
            assertThat(d.queues()).extracting(DeviceStats.Queue::label)
                    .containsExactly("rx0", "tx0", "rx1", "tx1", "rx2", "tx2");
            assertThat(d).isEqualTo(DeviceStats.of(dev, "/run/vm0.sock", "loopback", true));

            assertThat(Launcher.get("127.0.0.1", port, "/nope").status()).isEqualTo(404);
            // the 404 echoes the path asked for: a browser must not read it as HTML
            assertThat(new String(BoundedHttpServer.render(BoundedHttpServer.Response.text(404, "not found: /<b>\n"),
                    true), java.nio.charset.StandardCharsets.ISO_8859_1)).contains("X-Content-Type-Options: nosniff\r\n");
            assertThat(Launcher.get("127.0.0.1", port, "/").body()).contains("/metrics").contains("/stats");

            // mqvirtio stats against it: the table, then rates
            Out once = main("stats", "--from", "127.0.0.1:" + port);
            assertThat(once.rc()).as(once.err()).isZero();
            assertThat(once.out()).contains("frontend connected").contains("3 queue pairs");
            for (String q : List.of("rx0", "tx0", "rx1", "tx1", "rx2", "tx2", "total")) {
                assertThat(once.out()).containsPattern("(?m)^" + q + "\\s+0\\s+0\\s+0\\s+0\\s+0\\s+0$");
            }
            Out watch = main("stats", "--from", "localhost:" + port, "--watch", "0.2", "--count", "2");
            assertThat(watch.rc()).as(watch.err()).isZero();
            assertThat(watch.out().split("queue\\s+pps", -1)).as(watch.out()).hasSize(3);
        }
    }

    @Test
    void headAndOtherMethods() throws Exception {
        try (NetDevice dev = new NetDevice(NetDevice.Config.of("d", 1), new LoopbackBackend(1, 1500));
             MetricsServer m = MetricsServer.start(new InetSocketAddress("127.0.0.1", 0),
                     List.of(new MetricsServer.Source(dev, "s", "loopback", () -> false)))) {
            var client = java.net.http.HttpClient.newHttpClient();
            try (client) {
                var uri = java.net.URI.create("http://127.0.0.1:" + m.address().getPort() + "/metrics");
                var head = client.send(java.net.http.HttpRequest.newBuilder(uri).HEAD().build(),
                        java.net.http.HttpResponse.BodyHandlers.ofString());
                assertThat(head.statusCode()).isEqualTo(200);
                assertThat(head.body()).isEmpty();
                // a HEAD's Content-Length is the GET's (RFC 9110 section 8.6); a filter keeps the body the same
                var one = java.net.URI.create(uri + "?name[]=mqvirtio_device_queue_pairs");
                var getOne = client.send(java.net.http.HttpRequest.newBuilder(one).GET().build(),
                        java.net.http.HttpResponse.BodyHandlers.ofString());
                var headOne = client.send(java.net.http.HttpRequest.newBuilder(one).HEAD().build(),
                        java.net.http.HttpResponse.BodyHandlers.ofString());
                assertThat(getOne.body()).contains("mqvirtio_device_queue_pairs{device=\"d\"} 1");
                assertThat(headOne.headers().firstValue("Content-Length"))
                        .contains(Integer.toString(getOne.body().getBytes(StandardCharsets.UTF_8).length));
                assertThat(headOne.headers().firstValue("Content-Type")).isEqualTo(getOne.headers().firstValue("Content-Type"));
                var post = client.send(java.net.http.HttpRequest.newBuilder(uri)
                        .POST(java.net.http.HttpRequest.BodyPublishers.ofString("x")).build(),
                        java.net.http.HttpResponse.BodyHandlers.ofString());
                assertThat(post.statusCode()).isEqualTo(405);
                assertThat(post.headers().firstValue("Allow")).contains("GET, HEAD");
            }
        }
    }

    @Test
    void bindsOnlyToLoopback() {
        for (String ok : List.of("127.0.0.1:9100", "127.1.2.3:0", "[::1]:9100", "localhost:0")) {
            assertThat(MetricsServer.loopback("metrics", ok).getAddress().isLoopbackAddress()).as(ok).isTrue();
        }
        for (String bad : List.of("0.0.0.0:9100", "10.1.2.3:9100", "[::]:9100", "192.0.2.7:80")) {
            assertThatThrownBy(() -> MetricsServer.loopback("metrics", bad)).as(bad)
                    .isInstanceOf(UsageException.class).hasMessageContaining("is not a loopback address");
        }
        assertThatThrownBy(() -> MetricsServer.loopback("metrics", "127.0.0.1")).hasMessageContaining("needs ADDR:PORT");
        assertThatThrownBy(() -> MetricsServer.loopback("metrics", "::1:80")).hasMessageContaining("brackets");
        assertThatThrownBy(() -> MetricsServer.loopback("metrics", "[::1]9100")).hasMessageContaining("needs ADDR:PORT");
        assertThatThrownBy(() -> MetricsServer.loopback("metrics", "127.0.0.1:65536")).hasMessageContaining("0..65535");
        assertThatThrownBy(() -> MetricsServer.loopback("metrics", "127.0.0.1:http")).hasMessageContaining("a number");
        assertThatThrownBy(() -> MetricsServer.start(new InetSocketAddress("0.0.0.0", 0), List.of()))
                .isInstanceOf(IllegalArgumentException.class);

        // through the command: refused before anything is opened, as a usage error
        Out o = main("serve", "--socket-path", "/nonexistent/x.sock", "--loopback", "--metrics", "0.0.0.0:9100");
        assertThat(o.rc()).isEqualTo(2);
        assertThat(o.err()).contains("--metrics: 0.0.0.0 is not a loopback address");
    }

    @Test
    void statsCommandErrors() throws Exception {
        Out none = main("stats");
        assertThat(none.rc()).isEqualTo(2);
        assertThat(none.err()).contains("Missing required option: '--from=ADDR:PORT'");
        assertThat(main("stats", "--from", "127.0.0.1:1", "--count", "2").err()).contains("--count needs --watch");
        assertThat(main("stats", "--from", "127.0.0.1:1", "--watch", "0").rc()).isEqualTo(2);

        int port;
        try (ServerSocket s = new ServerSocket(0, 1, java.net.InetAddress.getLoopbackAddress())) {
            port = s.getLocalPort();
        }
        Out refused = main("stats", "--from", "127.0.0.1:" + port);
        assertThat(refused.rc()).isEqualTo(1);
        assertThat(refused.err()).startsWith("mqvirtio: stats: cannot read http://127.0.0.1:" + port + "/stats")
                .doesNotContain("\tat ");

        // something that is not mqvirtio serve
        var http = com.sun.net.httpserver.HttpServer.create(new InetSocketAddress("127.0.0.1", 0), 1);
        http.createContext("/stats", ex -> {
            byte[] b = "{\"devices\": 3}".getBytes(StandardCharsets.UTF_8);
            ex.sendResponseHeaders(200, b.length);
            ex.getResponseBody().write(b);
            ex.close();
        });
        http.start();
        try {
            Out odd = main("stats", "--from", "127.0.0.1:" + http.getAddress().getPort());
            assertThat(odd.rc()).isEqualTo(1);
            assertThat(odd.err()).contains("did not answer as mqvirtio serve does");
        } finally {
            http.stop(0);
        }
    }

    @Test
    void ratesBetweenSamples() {
        DeviceStats.Queue rx = new DeviceStats.Queue(0, "rx", 0, 0, 0, 0, 0, 0);
        DeviceStats a = new DeviceStats("d", "s", "b", 1, true,
                List.of(rx, new DeviceStats.Queue(0, "tx", 100, 10_000, 1, 0, 50, 20)));
        DeviceStats b = new DeviceStats("d", "s", "b", 1, true,
                List.of(rx, new DeviceStats.Queue(0, "tx", 2100, 260_000, 3, 0, 250, 220)));
        ByteArrayOutputStream o = new ByteArrayOutputStream();
        Stats.printRates(new Stats.Sample(1000, List.of(a)), new Stats.Sample(3000, List.of(b)),
                new PrintStream(o, true, StandardCharsets.UTF_8));
        // over 2 s: 1000 pps, 125000 B/s = 1.00 Mbit/s, 1 drop/s, 100 kicks/s, 100 notifies/s
        assertThat(o.toString(StandardCharsets.UTF_8)).contains("over 2.00 s")
                .containsPattern("(?m)^tx0\\s+1000\\s+1\\.00\\s+1\\s+0\\s+100\\s+100$")
                .containsPattern("(?m)^total\\s+1000\\s+1\\.00\\s+1\\s+0\\s+100\\s+100$");

        ByteArrayOutputStream r = new ByteArrayOutputStream();
        Stats.printRates(new Stats.Sample(3000, List.of(b)), new Stats.Sample(500, List.of(a)),
                new PrintStream(r, true, StandardCharsets.UTF_8));
        assertThat(r.toString(StandardCharsets.UTF_8)).contains("counters restarted").containsPattern("(?m)^tx0\\s+100\\s+10000");
    }

    /** One source of rates for the table, the live view and the plot: a counter that went back means no rates. */
    @Test
    void queueRatesAreEachQueuesAndNoneAfterARestart() {
        DeviceStats a = new DeviceStats("d", "s", "b", 1, true, List.of(new DeviceStats.Queue(0, "rx", 10, 1000, 0, 0, 4, 2),
                new DeviceStats.Queue(0, "tx", 100, 10_000, 1, 0, 50, 20)));
        DeviceStats b = new DeviceStats("d", "s", "b", 1, true, List.of(new DeviceStats.Queue(0, "rx", 30, 5000, 0, 2, 8, 2),
                new DeviceStats.Queue(0, "tx", 2100, 260_000, 3, 0, 250, 220)));
        double[][] r = Stats.queueRates(a, b, 2);
        assertThat(r[0]).containsExactly(10, 2000, 0, 1, 2, 0);
        assertThat(r[1]).containsExactly(1000, 125_000, 1, 0, 100, 100);
        assertThat(StatsView.rates(a, b, 2)).singleElement().satisfies(p -> {
            assertThat(p.rxPps()).isEqualTo(10);
            assertThat(p.txPps()).isEqualTo(1000);
            assertThat(p.kicks()).isEqualTo(102);
        });
        DeviceStats restarted = new DeviceStats("d", "s", "b", 1, true, List.of(new DeviceStats.Queue(0, "rx", 30, 5000, 0, 2, 8, 2),
                new DeviceStats.Queue(0, "tx", 2100, 260_000, 3, 0, 1, 220))); // kicks went back
        assertThat(Stats.queueRates(b, restarted, 1)).isNull();
        assertThat(StatsView.rates(b, restarted, 1)).isNull();
        assertThat(Stats.queueRates(null, b, 1)).isNull();
        assertThat(Stats.queueRates(a, b, 0)).isNull();
    }

    /** The live view: a line per pair with both directions, within the terminal's width and height. */
    @Test
    void liveViewFitsTheTerminal() {
        List<DeviceStats.Queue> before = new ArrayList<>();
        List<DeviceStats.Queue> after = new ArrayList<>();
        for (int p = 0; p < 40; p++) {
            before.add(new DeviceStats.Queue(p, "rx", 0, 0, 0, 0, 0, 0));
            before.add(new DeviceStats.Queue(p, "tx", 0, 0, 0, 0, 0, 0));
            // pair p: rx 1000*p packets of 125 bytes over 1 s, tx 2000*p; pair 39 the busiest
            after.add(new DeviceStats.Queue(p, "rx", 1000L * p, 125_000L * p, p, 0, 0, 10));
            after.add(new DeviceStats.Queue(p, "tx", 2000L * p, 250_000L * p, 0, 1, 20, 0));
        }
        DeviceStats a = new DeviceStats("vm0", "s", "tap mqv0", 40, true, before);
        DeviceStats b = new DeviceStats("vm0", "s", "tap mqv0", 40, true, after);
        String screen = StatsView.frame(new Stats.Sample(1000, List.of(a)), new Stats.Sample(2000, List.of(b)),
                "127.0.0.1:9100", 80, 24);
        List<String> lines = screen.lines().toList();
        assertThat(lines).hasSizeLessThanOrEqualTo(24).allSatisfy(l -> assertThat(l.length()).isLessThanOrEqualTo(80));
        assertThat(screen).contains("vm0  tap mqv0, 40 pairs, frontend connected").contains("kick/s");
        // the busiest pairs are shown, the rest summed in one line, then all of them
        assertThat(screen).containsPattern("(?m)^39\\s+39000\\s+39\\.0\\s+78000\\s+78\\.0\\s+39\\s+1\\s+20\\s+10$");
        assertThat(screen).containsPattern("(?m)^\\+\\d+\\s");
        assertThat(screen).containsPattern("(?m)^all\\s+780000\\s+780\\.0\\s+1560000\\s+1560\\.0\\s+780\\s+40\\s+800\\s+400$");
        String narrow = StatsView.frame(new Stats.Sample(1000, List.of(a)), new Stats.Sample(2000, List.of(b)), "x", 60, 100);
        assertThat(narrow.lines().toList()).hasSize(1 + 1 + 1 + 40 + 1).allSatisfy(l -> assertThat(l.length())
                .isLessThanOrEqualTo(60));
        assertThat(narrow).doesNotContain("kick/s");
    }

    @Test
    @Timeout(60)
    void watchLiveAndPlotAgainstARunningEndpoint() throws Exception {
        try (Endpoint e = Endpoint.start()) {
            java.nio.file.Path png = dir.resolve("queues.png");
            Out o = main("stats", "--from", "127.0.0.1:" + e.server().address().getPort(), "--watch", "0.2", "--count", "3",
                    "--live", "--plot", png.toString());
            assertThat(o.rc()).as(o.err()).isZero();
            assertThat(o.out().split("qp\\s+rx pps", -1)).as(o.out()).hasSize(4); // three screens
            assertThat(o.err()).contains("wrote " + png);
            byte[] head = java.nio.file.Files.readAllBytes(png);
            assertThat(java.util.Arrays.copyOf(head, 8)).isEqualTo(new byte[] {(byte) 0x89, 'P', 'N', 'G', 13, 10, 26, 10});
            java.awt.image.BufferedImage img = javax.imageio.ImageIO.read(png.toFile());
            assertThat(img.getWidth()).isEqualTo(1000);
        }
    }

    /** What the client library's scrape handler gives a scraper that asks: OpenMetrics, some families, gzip. */
    @Test
    void scrapersGetTheFormatAndFamiliesTheyAskFor() throws Exception {
        try (Endpoint e = Endpoint.start()) {
            int port = e.server().address().getPort();
            Launcher.Http om = Launcher.get("127.0.0.1", port, "/metrics",
                    "Accept: application/openmetrics-text; version=1.0.0; charset=utf-8\r\n");
            assertThat(om.status()).isEqualTo(200);
            assertThat(om.contentType()).startsWith("application/openmetrics-text; version=1.0.0");
            assertThat(om.body()).endsWith("# EOF\n").contains("# TYPE mqvirtio_queue_packets counter\n")
                    .contains("mqvirtio_queue_packets_total{device=\"vm0\",direction=\"rx\",queue=\"0\"} 0.0\n")
                    .contains("# TYPE mqvirtio_device info\n");

            Launcher.Http some = Launcher.get("127.0.0.1", port,
                    "/metrics?name[]=mqvirtio_frontend_connected&name[]=mqvirtio_queue_drops_total");
            assertThat(some.status()).isEqualTo(200);
            assertThat(some.body().lines().filter(l -> !l.startsWith("#")).toList()).containsExactlyInAnyOrder(
                    "mqvirtio_frontend_connected{device=\"vm0\"} 0.0",
                    "mqvirtio_queue_drops_total{device=\"vm0\",direction=\"rx\",queue=\"0\"} 0.0",
                    "mqvirtio_queue_drops_total{device=\"vm0\",direction=\"tx\",queue=\"0\"} 0.0");

            // gzip when asked (curl --compressed, Prometheus itself)
            try (java.net.Socket s = new java.net.Socket("127.0.0.1", port)) {
                s.setSoTimeout(5000);
                s.getOutputStream().write(("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept-Encoding: gzip\r\n"
                        + "Connection: close\r\n\r\n").getBytes(StandardCharsets.US_ASCII));
                byte[] all = s.getInputStream().readAllBytes();
                String head = new String(all, StandardCharsets.ISO_8859_1);
                int end = head.indexOf("\r\n\r\n") + 4;
                assertThat(head.substring(0, end)).containsIgnoringCase("Content-Encoding: gzip");
                String body = new String(new java.util.zip.GZIPInputStream(new java.io.ByteArrayInputStream(all, end,
                        all.length - end)).readAllBytes(), StandardCharsets.UTF_8);
                assertThat(body).contains("mqvirtio_queue_packets_total{device=\"vm0\"");
            }
        }
    }

    /** Bound elsewhere only when told so; then a scraper's own name for the host is served. */
    @Test
    void aRemoteBindIsExplicitAndServesAnyHost() throws Exception {
        Out refused = main("serve", "--socket-path", "/tmp/never.sock", "--loopback", "--metrics", "0.0.0.0:0");
        assertThat(refused.rc()).isEqualTo(2);
        assertThat(refused.err()).contains("is not a loopback address");
        Out alone = main("serve", "--socket-path", "/tmp/never.sock", "--loopback", "--metrics-remote");
        assertThat(alone.rc()).isEqualTo(2);
        assertThat(alone.err()).contains("--metrics-remote needs --metrics ADDR:PORT");

        NetDevice dev = new NetDevice(NetDevice.Config.of("vm0", 1), new LoopbackBackend(1, 1500));
        try (dev; MetricsServer m = MetricsServer.start(new InetSocketAddress("0.0.0.0", 0),
                List.of(new MetricsServer.Source(dev, "/run/vm0.sock", "loopback", () -> false)), true)) {
            int port = m.address().getPort();
            try (java.net.Socket s = new java.net.Socket("127.0.0.1", port)) {
                s.setSoTimeout(5000);
                s.getOutputStream().write(("GET /metrics HTTP/1.1\r\nHost: metrics.example:" + port
                        + "\r\nConnection: close\r\n\r\n").getBytes(StandardCharsets.US_ASCII));
                String all = new String(s.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
                assertThat(all).startsWith("HTTP/1.1 200 ").contains("mqvirtio_frontend_connected{device=\"vm0\"} 0.0");
            }
        }
    }

    @Test
    void jsonRoundTripAndMalformedInput() {
        Map<String, Object> m = new java.util.LinkedHashMap<>();
        m.put("s", "a\"b\\c\n\u0001é");
        m.put("n", -12);
        m.put("big", 1L << 40);
        m.put("d", 1.5);
        m.put("t", true);
        m.put("z", null);
        m.put("l", List.of(1, "x", List.of()));
        m.put("o", Map.of());
        assertThat(Json.parse(Json.write(m))).isEqualTo(m);
        assertThat(Json.parse(" {\"a\" : [ 1 , 2 ] } ")).isEqualTo(Map.of("a", List.of(1, 2)));
        assertThat(Json.write(List.of(Double.NaN, Double.POSITIVE_INFINITY, 0.5))).isEqualTo("[null,null,0.5]");
        assertThat(Json.parse("\"\\u0041\\/\"")).isEqualTo("A/");
        for (String bad : List.of("", "{", "{\"a\" 1}", "[1,]", "[1 2]", "tru", "\"x", "1.2.3", "{} x", "\"\\q\"",
                "[".repeat(100) + "]".repeat(100), "{\"a\":1,}", "\"\u0001\"", "{\"a\":1,\"a\":2}", "NaN")) {
            assertThatThrownBy(() -> Json.parse(bad)).as(bad).isInstanceOf(IllegalArgumentException.class)
                    .hasMessageStartingWith("malformed JSON: ").hasMessageNotContaining("\n");
        }
    }

    /** A device and an endpoint on an ephemeral 127.0.0.1 port, for the raw-socket tests below. */
    record Endpoint(NetDevice dev, MetricsServer server) implements AutoCloseable {
        static Endpoint start() throws IOException {
            NetDevice dev = new NetDevice(NetDevice.Config.of("vm0", 1), new LoopbackBackend(1, 1500));
            try {
                return new Endpoint(dev, MetricsServer.start(new InetSocketAddress("127.0.0.1", 0),
                        List.of(new MetricsServer.Source(dev, "/run/vm0.sock", "loopback", () -> false))));
            } catch (IOException | RuntimeException e) {
                dev.close();
                throw e;
            }
        }

        int port() {
            return server.address().getPort();
        }

        Socket connect() throws IOException {
            Socket s = new Socket(InetAddress.getByName("127.0.0.1"), port());
            s.setSoTimeout(10_000);
            return s;
        }

        @Override
        public void close() {
            server.close();
            dev.close();
        }
    }

    /** A response as it came off the wire: status line, header lines, body. */
    record Raw(int status, String head, String body) {}

    /**
     * Sends {@code request} as is on a fresh connection and reads one response: its head, then as many bytes of body
     * as its Content-Length says (none for HEAD), whether or not the server then keeps the connection open.
     */
    static Raw raw(Endpoint e, String request) throws IOException {
        try (Socket s = e.connect()) {
            s.getOutputStream().write(request.getBytes(StandardCharsets.ISO_8859_1));
            s.getOutputStream().flush();
            InputStream in = s.getInputStream();
            ByteArrayOutputStream head = new ByteArrayOutputStream();
            while (!head.toString(StandardCharsets.ISO_8859_1).endsWith("\r\n\r\n")) {
                int b = in.read();
                assertThat(b).as("a whole response head, got: %s", head).isNotNegative();
                head.write(b);
            }
            String h = head.toString(StandardCharsets.ISO_8859_1).strip();
            int length = 0;
            for (String line : h.split("\r\n")) {
                if (line.toLowerCase(java.util.Locale.ROOT).startsWith("content-length:")) {
                    length = Integer.parseInt(line.substring(line.indexOf(':') + 1).strip());
                }
            }
            byte[] body = request.startsWith("HEAD ") ? new byte[0] : in.readNBytes(length);
            assertThat(body).as("the whole body").hasSize(request.startsWith("HEAD ") ? 0 : length);
            return new Raw(Integer.parseInt(h.split(" ")[1]), h, new String(body, StandardCharsets.UTF_8));
        }
    }

    /** Reads until the server closes {@code s} (or resets it); what it sent before, as text. */
    static String untilClosed(Socket s) throws IOException {
        ByteArrayOutputStream got = new ByteArrayOutputStream();
        byte[] b = new byte[4096];
        InputStream in = s.getInputStream();
        try {
            for (int n; (n = in.read(b)) >= 0; ) {
                got.write(b, 0, n);
            }
        } catch (java.net.SocketException reset) {
            // a reset also ends the connection: the server stopped reading what was still coming
        }
        return got.toString(StandardCharsets.ISO_8859_1);
    }

    static final String PARTIAL = "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: stall";

    /**
     * Clients that open a connection and send part of a request head, then nothing (item 11 of the hardening issue:
     * with a fixed pool of reader threads and no deadline, two of them left every later client unanswered). A
     * well-formed client is answered at once while they stall, and the server closes each stalled one after its
     * head deadline, not never.
     */
    @Test
    @Timeout(30)
    void stalledRequestHeadsDoNotStarveOtherClients() throws Exception {
        try (Endpoint e = Endpoint.start()) {
            List<Socket> stalled = new ArrayList<>();
            try {
                for (int i = 0; i < 8; i++) {
                    Socket s = e.connect();
                    stalled.add(s);
                    s.getOutputStream().write(PARTIAL.getBytes(StandardCharsets.US_ASCII));
                    s.getOutputStream().flush();
                }
                Thread.sleep(300); // let the server take them all up
                long t0 = System.nanoTime();
                Launcher.Http ok = Launcher.get("127.0.0.1", e.port(), "/metrics");
                long ms = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t0);
                assertThat(ok.status()).isEqualTo(200);
                assertThat(ok.body()).contains("mqvirtio_queue_packets_total{device=\"vm0\"");
                assertThat(ms).as("answered while 8 clients stall").isLessThan(5000);

                // each stalled connection is told 408 and closed once its head time is up
                for (Socket s : stalled) {
                    long c0 = System.nanoTime();
                    String got = untilClosed(s);
                    assertThat(TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - c0)).isLessThan(8000);
                    assertThat(got).startsWith("HTTP/1.1 408 Request Timeout\r\n").contains("Connection: close\r\n")
                            .doesNotContain("mqvirtio_");
                }
            } finally {
                for (Socket s : stalled) {
                    s.close();
                }
            }
        }
    }

    /**
     * A client that trickles its request head one byte every 200 ms, forever: no single read ever waits long, so
     * only a deadline on the whole head (not a per-read timeout) stops it. The server must close it within a few
     * seconds and answer others meanwhile.
     */
    @Test
    @Timeout(30)
    void tricklingClientIsCutOffByTheHeadDeadline() throws Exception {
        try (Endpoint e = Endpoint.start(); Socket s = e.connect()) {
            long t0 = System.nanoTime();
            CompletableFuture<Long> closedAfter = new CompletableFuture<>();
            Thread reader = Thread.ofVirtual().start(() -> {
                try {
                    assertThat(untilClosed(s)).startsWith("HTTP/1.1 408 ");
                    closedAfter.complete(TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t0));
                } catch (IOException | AssertionError x) {
                    closedAfter.completeExceptionally(x);
                }
            });
            byte[] head = (PARTIAL + "\r\nX-Trickle: ").getBytes(StandardCharsets.US_ASCII);
            OutputStream o = s.getOutputStream();
            int sent = 0;
            try {
                while (!closedAfter.isDone() && System.nanoTime() - t0 < TimeUnit.SECONDS.toNanos(12)) {
                    o.write(sent < head.length ? head[sent] : 'a');
                    o.flush();
                    sent++;
                    if (sent == 5) {
                        assertThat(Launcher.get("127.0.0.1", e.port(), "/stats").status()).isEqualTo(200);
                    }
                    Thread.sleep(200);
                }
            } catch (IOException reset) {
                // the server closed it and the kernel said so to the writer first
            }
            long ms = closedAfter.get(12, TimeUnit.SECONDS);
            assertThat(ms).as("closed after %d trickled bytes", sent).isLessThan(8000);
            reader.join();
        }
    }

    /**
     * A request head without end: header lines streamed as fast as the socket takes them. The server reads a bounded
     * head, refuses it (431, RFC 6585 section 5, if the client still reads) and stops reading; the writer then fails
     * long before 64 MiB, more than every socket buffer on the way can hold, so the server buffered a bounded
     * amount. A client with a 1 MiB head that it does finish is refused the same way.
     */
    @Test
    @Timeout(30)
    void oversizedRequestHeadIsRefusedWithoutReadingItAll() throws Exception {
        try (Endpoint e = Endpoint.start()) {
            AtomicLong written = new AtomicLong();
            try (Socket s = e.connect()) {
                CompletableFuture<String> answer = CompletableFuture.supplyAsync(() -> {
                    try {
                        return untilClosed(s);
                    } catch (IOException x) {
                        throw new java.io.UncheckedIOException(x);
                    }
                }, r -> Thread.ofVirtual().start(r));
                OutputStream o = s.getOutputStream();
                byte[] line = ("X-Pad: " + "a".repeat(1016) + "\r\n").getBytes(StandardCharsets.US_ASCII);
                byte[] chunk = new byte[16 * line.length];
                for (int i = 0; i < 16; i++) {
                    System.arraycopy(line, 0, chunk, i * line.length, line.length);
                }
                boolean failed = false;
                try {
                    o.write((PARTIAL + "\r\n").getBytes(StandardCharsets.US_ASCII));
                    while (written.get() < 64L << 20) {
                        o.write(chunk);
                        written.addAndGet(chunk.length);
                    }
                } catch (IOException stopped) {
                    failed = true;
                }
                assertThat(failed).as("the server stopped reading, after %d bytes sent", written.get()).isTrue();
                assertThat(answer.get(10, TimeUnit.SECONDS)).satisfiesAnyOf(g -> assertThat(g).isEmpty(),
                        g -> assertThat(g).startsWith("HTTP/1.1 431 "));
            }

            // 1 MiB of headers, then the blank line: refused, nothing of the metrics
            StringBuilder big = new StringBuilder("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n");
            while (big.length() < 1 << 20) {
                big.append("X-Pad-").append(big.length()).append(": ").append("b".repeat(200)).append("\r\n");
            }
            big.append("\r\n");
            try (Socket s = e.connect()) {
                CompletableFuture<Void> send = CompletableFuture.runAsync(() -> {
                    try {
                        s.getOutputStream().write(big.toString().getBytes(StandardCharsets.US_ASCII));
                    } catch (IOException stopped) {
                        // expected: the server closes before it took the whole head
                    }
                }, r -> Thread.ofVirtual().start(r));
                String got = untilClosed(s);
                assertThat(got).satisfiesAnyOf(g -> assertThat(g).isEmpty(),
                        g -> assertThat(g).startsWith("HTTP/1.1 431 "));
                assertThat(got).doesNotContain("mqvirtio_");
                send.get(10, TimeUnit.SECONDS);
            }
            assertThat(raw(e, "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").status()).isEqualTo(200);
        }
    }

    /**
     * DNS rebinding: a page on evil.example.com whose name the attacker re-points at 127.0.0.1 makes the victim's
     * browser send requests here that carry {@code Host: evil.example.com:PORT} and whose answers the page may read.
     * Only loopback names and literals are served; anything else gets 421 (RFC 9110 section 15.5.20) and nothing of
     * the counters. HTTP/1.1 without a Host, or with two, is a 400 (RFC 9112 section 3.2); HTTP/1.0 may omit it.
     */
    @Test
    @Timeout(30)
    void servesOnlyRequestsThatNameALoopbackHost() throws Exception {
        try (Endpoint e = Endpoint.start()) {
            int port = e.port();
            for (String host : List.of("127.0.0.1", "127.0.0.1:" + port, "localhost", "LocalHost:" + port, "[::1]",
                    "[::1]:" + port, "localhost:19100", "127.0.0.1:80")) {
                for (String path : List.of("/metrics", "/stats")) {
                    Raw r = raw(e, "GET " + path + " HTTP/1.1\r\nHost: " + host + "\r\n\r\n");
                    assertThat(r.status()).as("Host: %s %s", host, path).isEqualTo(200);
                }
            }
            assertThat(raw(e, "GET /stats HTTP/1.1\r\nhost:localhost\r\nConnection: close\r\n\r\n").body())
                    .contains("\"devices\"");
            for (String host : List.of("evil.example.com:" + port, "evil.example.com", "localhost.evil.example.com",
                    "127.0.0.1.evil.example.com", "mqvirtio.local:" + port, "[::2]:" + port, "10.0.0.1:" + port,
                    "0.0.0.0:" + port, "localhost:http", "[::1", "")) {
                for (String path : List.of("/metrics", "/stats", "/", "/nope")) {
                    Raw r = raw(e, "GET " + path + " HTTP/1.1\r\nHost: " + host + "\r\n\r\n");
                    assertThat(r.status()).as("Host: %s %s", host, path).isIn(400, 421);
                    assertThat(r.body()).as("Host: %s %s", host, path).doesNotContain("mqvirtio_")
                            .doesNotContain("devices").doesNotContain("vm0");
                }
            }
            Raw evil = raw(e, "GET /stats HTTP/1.1\r\nHost: evil.example.com:" + port + "\r\n\r\n");
            assertThat(evil.status()).isEqualTo(421);
            assertThat(evil.body()).isEqualTo("misdirected request: this endpoint answers only to a loopback Host\n");
            assertThat(raw(e, "HEAD /metrics HTTP/1.1\r\nHost: evil.example.com\r\n\r\n").status())
                    .isEqualTo(421);

            // the absolute form names the host in the request target, and that is what counts (RFC 9112 3.2.2)
            assertThat(raw(e, "GET http://evil.example.com/stats HTTP/1.1\r\nHost: localhost\r\n\r\n").status())
                    .isEqualTo(421);
            assertThat(raw(e, "GET http://localhost:" + port + "/stats HTTP/1.1\r\nHost: x.example\r\n\r\n").status())
                    .isEqualTo(200);
            // an empty line before the request line and bare LF line ends are accepted (RFC 9112 section 2.2)
            assertThat(raw(e, "\r\nGET /metrics HTTP/1.1\nHost: localhost\n\n").status()).isEqualTo(200);

            // no Host: HTTP/1.1 must send one (400), HTTP/1.0 need not (no browser omits it)
            assertThat(raw(e, "GET /metrics HTTP/1.1\r\n\r\n").status()).isEqualTo(400);
            assertThat(raw(e, "GET /metrics HTTP/1.1\r\nHost: localhost\r\nHost: localhost\r\n\r\n").status())
                    .isEqualTo(400);
            Raw old = raw(e, "GET /metrics HTTP/1.0\r\n\r\n");
            assertThat(old.status()).isEqualTo(200);
            assertThat(old.body()).contains("mqvirtio_device_queue_pairs{device=\"vm0\"} 1.0\n");
            assertThat(raw(e, "GET /metrics HTTP/1.0\r\nHost: evil.example.com\r\n\r\n").status()).isEqualTo(421);
        }
    }
}
