package io.mqvirtio.cli;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;
import static org.junit.jupiter.api.Assertions.assertTimeoutPreemptively;

import java.io.IOException;
import java.io.OutputStream;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.net.URI;
import java.net.http.HttpClient;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * {@code mqvirtio stats} against an endpoint that is not mqvirtio serve and means harm (whoever listens on the
 * address given to {@code --from}): its reply bounded in size and in time, never held on to for good.
 */
@Timeout(30)
class StatsClientTest {
    static final String HEAD = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n";

    /** One connection's worth of a hostile server: {@code script} writes what it likes to the client. */
    interface Script {
        void run(OutputStream o) throws IOException, InterruptedException;
    }

    /** Serves {@code script} to one client; {@link #ended} counts down once the client has gone. */
    record Hostile(ServerSocket socket, CountDownLatch ended, Thread thread) implements AutoCloseable {
        static Hostile start(Script script) throws IOException {
            ServerSocket s = new ServerSocket(0, 4, InetAddress.getLoopbackAddress());
            CountDownLatch ended = new CountDownLatch(1);
            Thread t = Thread.ofPlatform().daemon(true).start(() -> {
                try (Socket c = s.accept()) {
                    script.run(c.getOutputStream());
                } catch (IOException | InterruptedException e) {
                    // the client went away (or the test ended)
                }
                ended.countDown();
            });
            return new Hostile(s, ended, t);
        }

        String from() {
            return "127.0.0.1:" + socket.getLocalPort();
        }

        @Override
        public void close() throws IOException {
            thread.interrupt();
            socket.close();
        }
    }

    /**
     * A head, then more body than any /stats reply, then nothing, with the connection left open: the client read all
     * of it and waited for the end that never comes (the request's timeout was over with the head).
     */
    @Test
    void aReplyLongerThanAnyStatsIsRefusedAsSoonAsItIs() throws Exception {
        try (Hostile h = Hostile.start(o -> {
            o.write(HEAD.getBytes(StandardCharsets.ISO_8859_1));
            o.write("{\"x\":\"".getBytes(StandardCharsets.ISO_8859_1));
            byte[] chunk = new byte[1 << 16];
            java.util.Arrays.fill(chunk, (byte) 'a');
            for (long sent = 0; sent <= Stats.MAX_REPLY_BYTES + (1 << 20); sent += chunk.length) {
                o.write(chunk);
            }
            o.flush();
            Thread.sleep(60_000);
        })) {
            MetricsServerTest.Out out = assertTimeoutPreemptively(Duration.ofSeconds(8),
                    () -> MetricsServerTest.main("stats", "--from", h.from()));
            assertThat(out.rc()).isEqualTo(1);
            assertThat(out.err()).contains("body exceeds capacity: " + Stats.MAX_REPLY_BYTES);
        }
    }

    /** A head, then a byte of body now and then, for ever: the whole exchange has a deadline, and ends with it. */
    @Test
    void aTricklingReplyEndsAtTheDeadlineAndTheConnectionWithIt() throws Exception {
        try (Hostile h = Hostile.start(o -> {
            o.write(HEAD.getBytes(StandardCharsets.ISO_8859_1));
            o.flush();
            while (true) {
                o.write(' '); // JSON whitespace: never a malformed reply, never a whole one
                o.flush();
                Thread.sleep(20);
            }
        }); HttpClient client = HttpClient.newHttpClient()) {
            URI uri = URI.create("http://" + h.from() + "/stats");
            long start = System.nanoTime();
            assertTimeoutPreemptively(Duration.ofSeconds(8), () -> assertThatThrownBy(() -> Stats.fetch(client, uri,
                    Duration.ofMillis(800))).isInstanceOf(java.net.http.HttpTimeoutException.class)
                    .hasMessageContaining("800 ms"));
            assertThat(TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - start)).isBetween(700L, 4000L);
            assertThat(h.ended().await(5, TimeUnit.SECONDS)).as("the client closed the connection").isTrue();
        }
    }

    /**
     * Names with terminal escapes (as JSON escapes: a valid reply): clear the screen, retitle the window, a C1 CSI,
     * a bidirectional override. Every view prints them with '?' in place of each control, none of them raw.
     */
    @Test
    void namesInAReplyReachTheTerminalWithoutTheirControls() throws Exception {
        String name = "vm\u001b]0;owned\u0007\u001b[2J";
        java.util.concurrent.atomic.AtomicLong uptime = new java.util.concurrent.atomic.AtomicLong();
        var http = com.sun.net.httpserver.HttpServer.create(new java.net.InetSocketAddress("127.0.0.1", 0), 4);
        http.createContext("/stats", ex -> {
            java.util.List<Object> queues = new java.util.ArrayList<>();
            for (String dir : java.util.List.of("rx", "tx\u001b[A")) {
                java.util.Map<String, Object> q = new java.util.LinkedHashMap<>();
                q.put("pair", 0);
                q.put("direction", dir);
                for (String f : DeviceStats.Queue.FIELDS) {
                    q.put(f, uptime.get());
                }
                q.put("method", "readv\u009b2J");
                queues.add(q);
            }
            java.util.Map<String, Object> d = new java.util.LinkedHashMap<>();
            d.put("name", name);
            d.put("socket", "/run/\u202evm.sock");
            d.put("backend", "tap\r\n\u001bc");
            d.put("pairs", 1);
            d.put("connected", true);
            d.put("queues", queues);
            byte[] b = Json.write(java.util.Map.of("uptime_ms", uptime.addAndGet(1000), "devices", java.util.List.of(d)))
                    .getBytes(StandardCharsets.UTF_8);
            ex.sendResponseHeaders(200, b.length);
            ex.getResponseBody().write(b);
            ex.close();
        });
        http.start();
        try {
            String from = "127.0.0.1:" + http.getAddress().getPort();
            for (String[] argv : java.util.List.of(new String[] {"stats", "--from", from},
                    new String[] {"stats", "--from", from, "--watch", "0.1", "--count", "1"},
                    new String[] {"stats", "--from", from, "--watch", "0.1", "--count", "1", "--live"})) {
                MetricsServerTest.Out o = MetricsServerTest.main(argv);
                assertThat(o.rc()).as(o.err()).isZero();
                assertThat(o.out()).as(String.join(" ", argv)).contains("vm?]0;owned??[2J")
                        .doesNotContain("\u001b", "\u0007", "\u009b", "\u202e", "\r");
            }
        } finally {
            http.stop(0);
        }
    }

    /**
     * {@code --plot} in a directory someone else may write: a link planted at the name of the old temporary file
     * ({@code FILE.png.tmp}) made the plot overwrite the link's target. The target is left alone, the plot is written,
     * and no temporary file stays behind.
     */
    @Test
    void thePlotIsWrittenThroughAFileOfItsOwnNotThroughAPlantedLink(@org.junit.jupiter.api.io.TempDir java.nio.file.Path dir)
            throws Exception {
        java.nio.file.Path victim = java.nio.file.Files.writeString(dir.resolve("victim"), "keep me");
        java.nio.file.Path png = dir.resolve("queues.png");
        java.nio.file.Files.createSymbolicLink(dir.resolve("queues.png.tmp"), victim);
        java.util.List<Stats.Sample> samples = new java.util.ArrayList<>();
        for (int s = 0; s < 3; s++) {
            samples.add(new Stats.Sample(1000L * s, java.util.List.of(new DeviceStats("vm0", "/run/vm0.sock", "loopback", 1,
                    true, java.util.List.of(new DeviceStats.Queue(0, "rx", 100L * s, 0, 0, 0, 0, 0),
                            new DeviceStats.Queue(0, "tx", 50L * s, 0, 0, 0, 0, 0))))));
        }
        StatsPlot.write(samples, "now", png);
        assertThat(new String(java.nio.file.Files.readAllBytes(victim), StandardCharsets.ISO_8859_1)).as("the victim")
                .isEqualTo("keep me");
        assertThat(javax.imageio.ImageIO.read(png.toFile()).getWidth()).isEqualTo(1000);
        try (var left = java.nio.file.Files.list(dir)) {
            assertThat(left.map(p -> p.getFileName().toString()).sorted().toList())
                    .containsExactly("queues.png", "queues.png.tmp", "victim");
        }
    }

    /**
     * Nothing listening where --from points: the line says so. Before it ended in "java.net.ConnectException", the
     * JDK's HTTP client giving no message and no cause that has one.
     */
    @Test
    void nothingListeningThereIsSaidInWords() {
        MainTest.Out r = MainTest.run("stats", "--from", "127.0.0.1:1");
        assertThat(r.rc()).isEqualTo(1);
        assertThat(r.err()).contains("cannot connect (nothing accepts connections there)").doesNotContain("java.net");
    }
}
