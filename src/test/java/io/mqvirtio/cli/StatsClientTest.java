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
            assertThat(out.err()).contains("longer than " + Stats.MAX_REPLY_BYTES + " bytes");
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
}
