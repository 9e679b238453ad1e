package io.mqvirtio.vhostuser;

import static io.mqvirtio.vhostuser.BackendHarness.BASIC_PF;
import static io.mqvirtio.vhostuser.RawPeer.NEED_REPLY;
import static io.mqvirtio.vhostuser.RawPeer.V1;
import static io.mqvirtio.vhostuser.RawPeer.frame;
import static io.mqvirtio.vhostuser.RawPeer.state;
import static io.mqvirtio.vhostuser.RawPeer.u64;
import static org.assertj.core.api.Assertions.assertThat;

import io.mqvirtio.linux.EventFd;
import java.io.ByteArrayOutputStream;
import java.nio.file.Path;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * Frontends that flood the backend, or stop in the middle of a message. A flood is answered in full and costs
 * nothing that stays; a stalled connection waits, alone: its socket refuses other frontends meanwhile (one session
 * per socket), other sockets serve normally, and the stalled one serves again once that frontend goes away.
 */
@Timeout(60)
class FloodAndStallTest {
    @TempDir
    Path dir;
    private Path sockA;
    private Path sockB;
    private RecordingDevice devA;
    private RecordingDevice devB;
    private VhostUserServer a;
    private VhostUserServer b;

    @BeforeEach
    void start() {
        sockA = dir.resolve("a.sock");
        sockB = dir.resolve("b.sock");
        devA = new RecordingDevice(2);
        devB = new RecordingDevice(2);
        a = VhostUserServer.listen(sockA, devA);
        b = VhostUserServer.listen(sockB, devB);
    }

    @AfterEach
    void stop() {
        a.close();
        b.close();
    }

    /** {@code n} copies of one message, back to back. */
    private static byte[] repeat(byte[] message, int n) {
        ByteArrayOutputStream out = new ByteArrayOutputStream(message.length * n);
        for (int i = 0; i < n; i++) {
            out.writeBytes(message);
        }
        return out.toByteArray();
    }

    @Test
    void hundredThousandGetFeaturesAreAllAnswered() throws Exception {
        final int total = 100_000, batch = 1000;
        try (RawPeer fe = RawPeer.connect(sockA)) {
            long features = fe.get(Request.GET_FEATURES);
            byte[] burst = repeat(frame(Request.GET_FEATURES.id, V1, 0, new byte[0]), batch);
            CompletableFuture<Void> writer = CompletableFuture.runAsync(() -> {
                for (int i = 0; i < total / batch; i++) {
                    fe.sendRaw(burst);
                }
            });
            for (int i = 0; i < total; i++) {
                RawPeer.Reply r = fe.read(10_000);
                assertThat(r.request()).isEqualTo(Request.GET_FEATURES.id);
                assertThat(r.u64()).isEqualTo(features);
            }
            writer.get(10, TimeUnit.SECONDS);
            // Still a working session afterwards.
            BackendHarness.negotiate(fe, BASIC_PF);
        }
        BackendHarness.assertServesFully(a, sockA, devA);
    }

    @Test
    void aFloodOfFailingRequestsIsAnsweredAndLoggedInPart() throws Exception {
        final int total = 30_000, batch = 1000;
        try (RawPeer fe = RawPeer.connect(sockA); LogCapture log = new LogCapture()) {
            BackendHarness.negotiate(fe, BASIC_PF);
            byte[] burst = repeat(frame(77, V1 | NEED_REPLY, 8, u64(0)), batch);
            CompletableFuture<Void> writer = CompletableFuture.runAsync(() -> {
                for (int i = 0; i < total / batch; i++) {
                    fe.sendRaw(burst);
                }
            });
            for (int i = 0; i < total; i++) {
                RawPeer.Reply r = fe.read(10_000);
                assertThat(r.request()).isEqualTo(77);
                assertThat(r.u64()).isNotZero();
            }
            writer.get(10, TimeUnit.SECONDS);
            assertThat(fe.get(Request.GET_QUEUE_NUM)).isEqualTo(2);
            assertThat(log.lines()).as("warnings logged for %d failures", total)
                    .hasSize(WarningLimit.BURST)
                    .last().asString().contains("the last warning about this frontend logged for up to 60 s");
        }
        BackendHarness.assertServesFully(a, sockA, devA);
    }

    /** A frontend that reconnects to fail again gets no fresh allowance of warnings with each connection. */
    @Test
    void aReconnectStormIsLoggedInPartToo() throws Exception {
        int connections = 3 * WarningLimit.BURST;
        try (LogCapture log = new LogCapture().quiet()) {
            for (int i = 0; i < connections; i++) {
                for (int attempt = 0; ; attempt++) {
                    // the previous connection's session may still be ending: a second frontend is turned away then
                    try (RawPeer fe = RawPeer.connect(sockA)) {
                        BackendHarness.negotiate(fe, BASIC_PF);
                        fe.sendRaw(frame(77, V1 | NEED_REPLY, 8, u64(0)));
                        assertThat(fe.read(10_000).u64()).isNotZero();
                        break;
                    } catch (RawPeer.Closed | io.mqvirtio.linux.ErrnoException e) {
                        assertThat(attempt).as("connection %d turned away", i).isLessThan(2000);
                        Thread.sleep(1);
                    }
                }
            }
            assertThat(log.lines()).as("warnings logged for %d connections that each failed once", connections)
                    .hasSize(WarningLimit.BURST);
        }
        BackendHarness.assertServesFully(a, sockA, devA);
    }

    /**
     * Requests that each log a line at INFO (protocol features, a ring enabled and disabled, an MTU, a RARP; and the
     * connected, reset and closed lines of each new connection), sent in a loop, fill the log (every VM's, often a
     * journal with a rate limit per service) no faster than the socket's allowance: it used to take one line each,
     * 30,000 and more here.
     */
    @Test
    void aFloodOfRequestsThatEachLogALineIsLoggedInPart() throws Exception {
        Path sock = dir.resolve("n.sock");
        int pairs = 2;
        int allowance = WarningLimit.NOTICES + WarningLimit.NOTICES_PER_RING * 2 * pairs;
        try (LogCapture log = new LogCapture("io.mqvirtio", java.util.logging.Level.INFO).quiet();
             io.mqvirtio.net.NetDevice dev = new io.mqvirtio.net.NetDevice(io.mqvirtio.net.NetDevice.Config.of("n", pairs),
                     new io.mqvirtio.backend.LoopbackBackend(pairs, 1500));
             VhostUserServer server = VhostUserServer.listen(sock, dev)) {
            final int rounds = 2000, batch = 100;
            try (RawPeer fe = RawPeer.connect(sock)) {
                BackendHarness.negotiate(fe, BackendHarness.ALL_PF);
                ByteArrayOutputStream round = new ByteArrayOutputStream();
                round.writeBytes(frame(Request.SET_PROTOCOL_FEATURES.id, V1, 8, u64(BackendHarness.ALL_PF)));
                round.writeBytes(frame(Request.SET_VRING_ENABLE.id, V1, 8, RawPeer.state(0, 1)));
                round.writeBytes(frame(Request.SET_VRING_ENABLE.id, V1, 8, RawPeer.state(0, 0)));
                round.writeBytes(frame(Request.NET_SET_MTU.id, V1, 8, u64(1400)));
                round.writeBytes(frame(Request.SEND_RARP.id, V1, 8, u64(0x0000_5634_1200_5452L)));
                byte[] burst = repeat(round.toByteArray(), batch);
                for (int i = 0; i < rounds / batch; i++) {
                    fe.sendRaw(burst);
                }
                fe.get(Request.GET_FEATURES); // a request with a reply: everything before it was handled
            }
            for (int i = 0; i < 300; i++) {
                BackendHarness.awaitNoSession(server);
                try (RawPeer fe = RawPeer.connect(sock)) {
                    fe.get(Request.GET_FEATURES);
                }
            }
            BackendHarness.awaitNoSession(server);
            java.util.List<String> lines = log.lines();
            assertThat(lines.size()).as("lines logged for %d requests and 300 connections that each logged one or more",
                    5 * rounds).isBetween(allowance, allowance + 20);
            assertThat(lines).anyMatch(l -> l.contains("the last notice about this frontend logged for up to 60 s"));
            assertThat(lines).noneMatch(l -> l.startsWith("WARNING"));
        }
        BackendHarness.assertServesFully(a, sockA, devA); // the other socket goes on
    }

    /**
     * A ring whose avail index its frontend keeps out of reach, restarted in a loop (a new kick fd starts it again):
     * each start broke it once more, and each break was a WARNING from the worker outside any allowance, one line per
     * request, in the log every VM shares (a journal's rate limit per service then drops the other VMs' lines too).
     * The device's own allowance now holds them: every break is counted, a window's first ones are logged.
     */
    @Test
    void aRingBrokenAgainAndAgainIsLoggedInPart() throws Exception {
        Path sock = dir.resolve("r.sock");
        final int restarts = 3 * WarningLimit.BURST;
        try (LogCapture log = new LogCapture("io.mqvirtio", java.util.logging.Level.WARNING).quiet();
             io.mqvirtio.net.NetDevice dev = new io.mqvirtio.net.NetDevice(io.mqvirtio.net.NetDevice.Config.of("r", 1),
                     new io.mqvirtio.backend.LoopbackBackend(1, 1500));
             VhostUserServer server = VhostUserServer.listen(sock, dev);
             RawPeer fe = RawPeer.connect(sock); GuestRam ram = new GuestRam();
             EventFd kick = EventFd.create(); EventFd call = EventFd.create()) {
            BackendHarness.negotiate(fe, BASIC_PF);
            fe.ok(Request.SET_MEM_TABLE, ram.memTable(), ram.fd());
            GuestRam.RingAt tx = ram.ring(1, BackendHarness.RING);
            // an avail index 1000 ahead of the used one: more than the ring holds, so the ring breaks when read
            ram.seg().set(java.lang.foreign.ValueLayout.JAVA_SHORT, tx.availOff() + io.mqvirtio.virtio.SplitRing.AVAIL_IDX,
                    (short) 1000);
            BackendHarness.setupRing(fe, ram, 1, kick, call);
            fe.ok(Request.SET_VRING_ENABLE, state(1, 1));
            awaitTrue(() -> dev.counters().get(1).errors() == 1, 5000);
            for (int i = 0; i < restarts; i++) {
                fe.ok(Request.SET_VRING_KICK, u64(1), kick.fd()); // stops the ring and starts it again
                kick.signal();
                long broken = i + 2;
                awaitTrue(() -> dev.counters().get(1).errors() == broken, 5000);
            }
            assertThat(fe.get(Request.GET_QUEUE_NUM)).isEqualTo(1);
            awaitTrue(() -> dev.counters().get(1).errors() == restarts + 1, 5000);
            assertThat(log.lines().stream().filter(l -> l.contains("ring broken")).count())
                    .as("lines logged for %d breaks of one ring", restarts + 1)
                    .isLessThanOrEqualTo(WarningLimit.BURST);
        }
        BackendHarness.assertServesFully(a, sockA, devA); // the other socket goes on
    }

    @Test
    void aFloodOfDescriptorsLeavesNoneBehind() throws Exception {
        BackendHarness.assertServesFully(a, sockA, devA); // warm
        Leaks before = Leaks.now();
        try (RawPeer fe = RawPeer.connect(sockA); EventFd call = EventFd.create()) {
            BackendHarness.negotiate(fe, BASIC_PF);
            for (int i = 0; i < 5000; i++) {
                // Each replaces the last one the session holds for ring i % 4, which must then be closed.
                fe.send(Request.SET_VRING_CALL, u64(i % 4), call.fd());
                // Descriptors on a request that takes none are closed, not kept (and a request with a reply of its
                // own that fails closes the connection).
                if (i == 4999) {
                    fe.send(Request.GET_QUEUE_NUM.id, V1, new byte[0], call.fd(), call.fd());
                    fe.expectClosed();
                    break;
                }
            }
        }
        BackendHarness.awaitNoSession(a);
        try (RawPeer fe = RawPeer.connect(sockA); EventFd call = EventFd.create()) {
            BackendHarness.negotiate(fe, BASIC_PF);
            for (int i = 0; i < 5000; i++) {
                fe.send(Request.SET_VRING_CALL, u64(i % 4), call.fd());
            }
            assertThat(fe.get(Request.GET_QUEUE_NUM)).isEqualTo(2);
            Leaks during = Leaks.now();
            // this connection's socket and epoll, the test's eventfd, and the session's socket and four call fds
            assertThat(during.fds()).as("%s", during.describe()).isLessThanOrEqualTo(before.fds() + 3 + 5);
        }
        BackendHarness.awaitNoSession(a);
        Leaks after = Leaks.settleTo(before, 3000);
        assertThat(after.fds()).as("before %s%nafter %s", before.describe(), after.describe()).isEqualTo(before.fds());
    }

    @Test
    void aFrontendThatNeverReadsStallsOnlyItsOwnSession() throws Exception {
        try (RawPeer fe = RawPeer.connect(sockA)) {
            byte[] burst = repeat(frame(Request.GET_FEATURES.id, V1, 0, new byte[0]), 1000);
            // Send until our own socket buffer is full too: the backend is blocked writing replies nobody reads.
            CompletableFuture<Void> writer = CompletableFuture.runAsync(() -> {
                try {
                    for (int i = 0; i < 1000; i++) {
                        fe.sendRaw(burst);
                    }
                } catch (RuntimeException closed) {
                    // the socket was closed under us below
                }
            });
            Thread.sleep(500);
            assertThat(writer).as("the writer is blocked").isNotDone();
            // Another socket is served in full meanwhile, and this one refuses a second frontend.
            BackendHarness.assertServesFully(b, sockB, devB);
            try (RawPeer second = RawPeer.connect(sockA)) {
                second.expectClosed();
            }
            fe.socket().shutdown();
            writer.get(10, TimeUnit.SECONDS);
        }
        BackendHarness.assertServesFully(a, sockA, devA);
    }

    @Test
    void aHeaderWhosePayloadNeverComesBlocksOnlyItsConnection() throws Exception {
        try (RawPeer stalled = RawPeer.connect(sockA); EventFd fd = EventFd.create()) {
            BackendHarness.negotiate(stalled, BASIC_PF);
            byte[] f = frame(Request.SET_VRING_CALL.id, V1 | NEED_REPLY, 8, u64(0));
            stalled.sendRaw(java.util.Arrays.copyOf(f, Protocol.HEADER_SIZE + 3), fd.fd()); // 3 of 8 payload bytes
            assertThat(stalled.closedWithin(300)).as("the backend waits for the rest").isFalse();

            // Meanwhile: the other socket serves in full, several times over; this socket refuses a second frontend.
            for (int i = 0; i < 3; i++) {
                BackendHarness.assertServesFully(b, sockB, devB);
            }
            try (RawPeer second = RawPeer.connect(sockA)) {
                second.expectClosed();
            }
            assertThat(a.hasSession()).isTrue();

            // The rest arrives late: the message completes and is answered.
            stalled.sendRaw(java.util.Arrays.copyOfRange(f, Protocol.HEADER_SIZE + 3, f.length));
            RawPeer.Reply r = stalled.read(5000);
            assertThat(r.request()).isEqualTo(Request.SET_VRING_CALL.id);
            assertThat(r.u64()).isZero();

            // Stall again, then go away: the backend notices and serves a new frontend.
            stalled.sendRaw(java.util.Arrays.copyOf(f, Protocol.HEADER_SIZE + 5), fd.fd());
            assertThat(stalled.closedWithin(200)).isFalse();
        }
        BackendHarness.assertServesFully(a, sockA, devA);
    }

    /**
     * One SET_MEM_TABLE header dribbled in a byte at a time with eight descriptors on each byte: the backend used to
     * collect them all until the message was complete (3,200 descriptors held by one connection, enough to make
     * another VM's session fail). Now a message holds at most eight: the ninth ends the connection, and the kernel
     * discards the descriptors that did not fit.
     */
    @Test
    void aMessageDribbledWithDescriptorsHoldsAtMostEight() throws Exception {
        BackendHarness.assertServesFully(a, sockA, devA); // warm
        Leaks before = Leaks.now();
        try (RawPeer fe = RawPeer.connect(sockA); GuestRam ram = new GuestRam(); LogCapture log = new LogCapture()) {
            BackendHarness.negotiate(fe, BASIC_PF);
            byte[] p = RawPeer.memTable(ram.region());
            byte[] f = frame(Request.SET_MEM_TABLE.id, V1 | NEED_REPLY, p.length, p);
            int[] eight = new int[8];
            java.util.Arrays.fill(eight, ram.fd());
            long most = 0;
            boolean closed = false;
            for (int i = 0; i < f.length && !closed; i++) {
                try {
                    fe.sendRaw(new byte[] {f[i]}, eight);
                } catch (io.mqvirtio.linux.ErrnoException e) {
                    closed = true; // the backend hung up under us
                }
                most = Math.max(most, Leaks.now().fds() - before.fds());
                closed |= fe.closedWithin(20);
            }
            assertThat(closed).as("the connection was closed").isTrue();
            // our connection, its epoll and our memfd; the session's socket and the eight descriptors of one message
            assertThat(most).as("descriptors held while the message dribbled in").isLessThanOrEqualTo(3 + 1 + 8);
            assertThat(log.lines()).anySatisfy(l -> assertThat(l).contains("carries more than 8 fds"));
        }
        BackendHarness.awaitNoSession(a);
        Leaks after = Leaks.settleTo(before, 3000);
        assertThat(after.fds()).as("before %s%nafter %s", before.describe(), after.describe()).isEqualTo(before.fds());
        BackendHarness.assertServesFully(a, sockA, devA);
    }

    /** A message begun and never finished is given up on after 10 s: the connection closes and the socket serves. */
    @Test
    void aMessageStalledMidWayIsGivenUpOnAfterTenSeconds() throws Exception {
        try (RawPeer stalled = RawPeer.connect(sockA); LogCapture log = new LogCapture()) {
            BackendHarness.negotiate(stalled, BASIC_PF);
            stalled.sendRaw(java.util.Arrays.copyOf(frame(Request.SET_FEATURES.id, V1, 8, u64(0)), Protocol.HEADER_SIZE + 2));
            long t0 = System.nanoTime();
            assertThat(stalled.closedWithin(Channel.MID_MESSAGE_MILLIS + 3000)).as("closed by the backend").isTrue();
            long ms = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t0);
            assertThat(ms).isBetween(Channel.MID_MESSAGE_MILLIS - 1000L, Channel.MID_MESSAGE_MILLIS + 3000L);
            assertThat(log.lines()).anySatisfy(l -> assertThat(l).contains("stalled in the middle of a message"));
        }
        BackendHarness.assertServesFully(a, sockA, devA);
    }

    /**
     * A frontend that sends requests and never reads the replies fills its socket: the backend's reply waits at
     * most 10 s for room (SO_SNDTIMEO), then the connection closes, and the socket serves the next frontend.
     */
    @Test
    void aFrontendThatNeverReadsIsClosedAfterTenSeconds() throws Exception {
        try (RawPeer fe = RawPeer.connect(sockA); LogCapture log = new LogCapture().quiet()) {
            byte[] burst = repeat(frame(Request.GET_FEATURES.id, V1, 0, new byte[0]), 1000);
            CompletableFuture<Void> writer = CompletableFuture.runAsync(() -> {
                try {
                    for (int i = 0; i < 1000; i++) {
                        fe.sendRaw(burst);
                    }
                } catch (RuntimeException closed) {
                    // the backend closed the connection
                }
            });
            long t0 = System.nanoTime();
            awaitTrue(() -> !a.hasSession(), Channel.MID_MESSAGE_MILLIS + 5000);
            assertThat(TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t0)).isLessThan(Channel.MID_MESSAGE_MILLIS + 5000L);
            fe.socket().shutdown();
            writer.get(10, TimeUnit.SECONDS);
        }
        BackendHarness.assertServesFully(a, sockA, devA);
    }

    private static void awaitTrue(java.util.function.BooleanSupplier c, long ms) throws InterruptedException {
        long deadline = System.nanoTime() + ms * 1_000_000L;
        while (!c.getAsBoolean()) {
            assertThat(System.nanoTime()).as("condition within %d ms", ms).isLessThan(deadline);
            Thread.sleep(1);
        }
    }

    @Test
    void closingTheServerEndsAStalledSession() throws Exception {
        try (RawPeer stalled = RawPeer.connect(sockA)) {
            stalled.sendRaw(java.util.Arrays.copyOf(frame(Request.SET_FEATURES.id, V1, 8, u64(0)), 14));
            assertThat(stalled.closedWithin(200)).isFalse();
            assertThat(a.hasSession()).isTrue();
            long t0 = System.nanoTime();
            a.close();
            assertThat(TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t0)).isLessThan(3000);
            assertThat(a.hasSession()).isFalse();
            stalled.expectClosed();
        }
    }
}
