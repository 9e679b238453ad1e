package io.mqvirtio.cli;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import io.mqvirtio.backend.LoopbackBackend;
import io.mqvirtio.net.NetDevice;
import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * The metrics endpoint in-process, on a real net device (loopback backend, no frontend) and a real HTTP server on an
 * ephemeral loopback port (127.0.0.1 of this process only): both formats, the loopback-only rule, and {@code
 * mqvirtio stats} reading it. Traffic through the counters is checked by the peer tests (QEMU, testpmd).
 */
@Timeout(60)
class MetricsServerTest {
    static final int PAIRS = 3;
    /** A Prometheus sample line: name, labels, value. */
    static final Pattern SAMPLE = Pattern.compile("([a-z_]+)\\{((?:[a-z_]+=\"(?:[^\"\\\\]|\\\\.)*\",?)*)\\} (-?[0-9]+)");

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
                if (line.startsWith("# HELP ")) {
                    continue;
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
                        assertThat(prom.body()).contains(family + "{device=\"vm\\\"0\\\\x\",queue=\"" + q + "\",direction=\""
                                + dir + "\"} 0\n");
                    }
                }
            }
            assertThat(samples).isEqualTo(6 * 2 * PAIRS + 3);
            assertThat(prom.body()).contains("mqvirtio_device_queue_pairs{device=\"vm\\\"0\\\\x\"} 3\n")
                    .contains("mqvirtio_frontend_connected{device=\"vm\\\"0\\\\x\"} 0\n")
                    .contains("socket=\"/run/vm0.sock\",backend=\"loopback\"} 1\n");

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
                    .isInstanceOf(Args.UsageException.class).hasMessageContaining("is not a loopback address");
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
        assertThat(none.err()).contains("stats needs --from ADDR:PORT");
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

    @Test
    void jsonRoundTripAndMalformedInput() {
        Map<String, Object> m = new java.util.LinkedHashMap<>();
        m.put("s", "a\"b\\c\n\u0001é");
        m.put("n", -12L);
        m.put("d", 1.5);
        m.put("t", true);
        m.put("z", null);
        m.put("l", List.of(1L, "x", List.of()));
        m.put("o", Map.of());
        assertThat(Json.parse(Json.write(m))).isEqualTo(m);
        assertThat(Json.parse(" {\"a\" : [ 1 , 2 ] } ")).isEqualTo(Map.of("a", List.of(1L, 2L)));
        assertThat(Json.parse("\"\\u0041\\/\"")).isEqualTo("A/");
        for (String bad : List.of("", "{", "{\"a\" 1}", "[1,]", "[1 2]", "tru", "\"x", "1.2.3", "{} x", "\"\\q\"",
                "[".repeat(100) + "]".repeat(100), "{\"a\":1,}", "\"\u0001\"")) {
            assertThatThrownBy(() -> Json.parse(bad)).as(bad).isInstanceOf(IllegalArgumentException.class)
                    .hasMessageStartingWith("malformed JSON at offset");
        }
    }
}
