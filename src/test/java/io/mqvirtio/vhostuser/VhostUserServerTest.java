package io.mqvirtio.vhostuser;

import static io.mqvirtio.vhostuser.BackendHarness.BASIC_PF;
import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import io.mqvirtio.linux.Epoll;
import io.mqvirtio.linux.UnixSocket;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermissions;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * The socket side of serving: binding a path (stale files, live servers, other files, permissions), one frontend
 * at a time, closing, and client mode reconnecting to a frontend that listens.
 */
@Timeout(30)
class VhostUserServerTest {
    @TempDir
    Path dir;

    /**
     * Two well-formed sessions back to back: the second connects the moment the first hangs up, while the first is
     * still tearing down (made slow here). It used to be refused as a second frontend; it waits and is served.
     */
    @Test
    void aFrontendThatReconnectsAtOnceIsServed() throws Exception {
        Path sock = dir.resolve("vu.sock");
        RecordingDevice dev = new RecordingDevice(2);
        dev.resetDelayMs = 300;
        try (VhostUserServer server = VhostUserServer.listen(sock, dev); LogCapture log = new LogCapture()) {
            for (int i = 0; i < 3; i++) {
                try (RawPeer fe = RawPeer.connect(sock)) {
                    BackendHarness.negotiate(fe, BASIC_PF);
                    assertThat(fe.get(Request.GET_QUEUE_NUM)).isEqualTo(2);
                }
            }
            assertThat(log.lines()).noneSatisfy(l -> assertThat(l).contains("refusing"));
        }
    }

    /** NET_SET_MTU is the last frontend's: a reset (its session ending) brings back the MTU the device was made with. */
    @Test
    void theMtuAFrontendSetEndsWithItsSession() throws Exception {
        Path sock = dir.resolve("vu.sock");
        io.mqvirtio.net.NetDevice dev = new io.mqvirtio.net.NetDevice(io.mqvirtio.net.NetDevice.Config.of("dev", 1),
                new io.mqvirtio.backend.LoopbackBackend(1, 1500));
        try (VhostUserServer server = VhostUserServer.listen(sock, dev)) {
            try (RawPeer fe = RawPeer.connect(sock)) {
                BackendHarness.negotiate(fe, BackendHarness.ALL_PF);
                fe.ok(Request.NET_SET_MTU, RawPeer.u64(9000));
                assertThat(dev.mtu()).isEqualTo(9000);
            }
            BackendHarness.awaitNoSession(server);
            assertThat(dev.mtu()).isEqualTo(1500);
        } finally {
            dev.close();
        }
    }

    /**
     * A listener at our path that never accepts (another local user's, its backlog full): probing it used to wait
     * for good, holding the directory's lock. Now the probe gives up after a second and we refuse the path.
     */
    @Test
    void aListenerThatNeverAcceptsAtOurPathIsRefusedNotWaitedFor() throws Exception {
        Path sock = dir.resolve("vu.sock");
        java.util.List<UnixSocket> queued = new java.util.ArrayList<>();
        try (UnixSocket squatter = UnixSocket.listen(sock, 0)) {
            try {
                while (queued.size() < 100) {
                    queued.add(UnixSocket.connect(sock, 50));
                }
            } catch (io.mqvirtio.linux.ErrnoException full) {
                // the backlog is full
            }
            long t0 = System.nanoTime();
            assertThatThrownBy(() -> VhostUserServer.listen(sock, new RecordingDevice(1)))
                    .isInstanceOf(VhostUserException.class).hasMessageContaining("without accepting");
            assertThat(java.util.concurrent.TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t0)).isLessThan(4000);
        } finally {
            queued.forEach(UnixSocket::close);
        }
    }

    /** Any user who can read a directory can flock it: socket set-up waits a bounded time, then says so. */
    @Test
    void aLockHeldOnTheSocketsDirectoryIsWaitedForABoundedTime() throws Exception {
        Path sock = dir.resolve("vu.sock");
        try (io.mqvirtio.linux.Fd held = io.mqvirtio.linux.Fd.lockDirectory(dir.toString(), 0)) {
            long t0 = System.nanoTime();
            assertThatThrownBy(() -> VhostUserServer.listen(sock, new RecordingDevice(1)))
                    .isInstanceOf(VhostUserException.class)
                    .hasMessageContaining("held a lock on that directory");
            long ms = java.util.concurrent.TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t0);
            assertThat(ms).isBetween(VhostUserServer.LOCK_WAIT_MS - 500, VhostUserServer.LOCK_WAIT_MS + 3000);
        }
        assertThat(sock).doesNotExist();
        try (VhostUserServer server = VhostUserServer.listen(sock, new RecordingDevice(1))) {
            assertThat(sock).exists(); // once the lock is gone
        }
    }

    /**
     * With a socket group the socket is that group's, mode 0660, from the moment it appears: both are set while it
     * sits in a directory of our own (0700), where no one can put a link in its place, then it is linked in.
     */
    @Test
    void theSocketGroupAndModeAreSetBeforeTheSocketAppears() throws Exception {
        Path sock = dir.resolve("vu.sock");
        try (VhostUserServer server = VhostUserServer.listen(sock, new RecordingDevice(1),
                new VhostUserServer.Options("daemon", io.mqvirtio.memory.MemoryBudget.processDefault()))) {
            assertThat(Files.getAttribute(sock, "posix:group", java.nio.file.LinkOption.NOFOLLOW_LINKS).toString())
                    .isEqualTo("daemon");
            assertThat(PosixFilePermissions.toString(Files.getPosixFilePermissions(sock, java.nio.file.LinkOption.NOFOLLOW_LINKS)))
                    .isEqualTo("rw-rw----");
            try (java.util.stream.Stream<Path> l = Files.list(dir)) {
                assertThat(l.map(p -> p.getFileName().toString()).toList()).as("nothing else left in the directory")
                        .containsExactly("vu.sock");
            }
            try (RawPeer fe = RawPeer.connect(sock)) {
                BackendHarness.negotiate(fe, BASIC_PF);
            }
        }
    }

    /** A device that is dead is served no more: each frontend is closed, and the log says why. */
    @Test
    void aDeadDeviceTurnsFrontendsAwayWithItsReason() throws Exception {
        Path sock = dir.resolve("vu.sock");
        RecordingDevice dev = new RecordingDevice(1);
        try (VhostUserServer server = VhostUserServer.listen(sock, dev); LogCapture log = new LogCapture()) {
            dev.dead = "qp0 did not answer (test)";
            try (RawPeer fe = RawPeer.connect(sock)) {
                fe.expectClosed();
            }
            assertThat(log.lines()).anySatisfy(l -> assertThat(l).contains("the device is dead (qp0 did not answer (test))"));
            dev.dead = null;
            BackendHarness.assertServesFully(server, sock, dev);
        }
    }

    /**
     * A ring that does not stop while a new memory table is installed ends the session; the new table's mappings,
     * which no worker ever saw, are unmapped at once (they used to stay mapped for good).
     */
    @Test
    void aNewMemoryTableIsUnmappedWhenARingDoesNotStop() throws Exception {
        Path sock = dir.resolve("vu.sock");
        RecordingDevice dev = new RecordingDevice(1);
        try (VhostUserServer server = VhostUserServer.listen(sock, dev); LogCapture log = new LogCapture().quiet();
             RawPeer fe = RawPeer.connect(sock);
             GuestRam ram = new GuestRam("mqv-stays-mapped", GuestRam.SIZE); // a ring that does not stop keeps it
             GuestRam other = new GuestRam("mqv-other-table", GuestRam.SIZE);
             io.mqvirtio.linux.EventFd k = io.mqvirtio.linux.EventFd.create();
             io.mqvirtio.linux.EventFd c = io.mqvirtio.linux.EventFd.create()) {
            BackendHarness.negotiate(fe, BASIC_PF);
            fe.ok(Request.SET_MEM_TABLE, ram.memTable(), ram.fd());
            BackendHarness.setupRing(fe, ram, 0, k, c);
            assertThat(dev.running()).isEqualTo(1);
            long before = Leaks.mappingsOf("mqv-other-table");
            dev.failStops = true;
            fe.sendAcked(Request.SET_MEM_TABLE, other.memTable(), other.fd());
            fe.expectClosed();
            BackendHarness.awaitNoSession(server);
            assertThat(Leaks.mappingsOf("mqv-other-table")).as("mappings of the new table").isEqualTo(before);
        }
    }

    @Test
    void socketFileIsOwnerOnlyAndRemovedOnClose() throws Exception {
        Path sock = dir.resolve("vu.sock");
        try (VhostUserServer server = VhostUserServer.listen(sock, new RecordingDevice(1))) {
            assertThat(PosixFilePermissions.toString(Files.getPosixFilePermissions(sock))).isEqualTo("rw-------");
            assertThat(server.path()).isEqualTo(sock);
            try (Stream s = new Stream(dir)) {
                assertThat(s.names()).as("no temporary socket name left behind").containsExactly("vu.sock");
            }
        }
        assertThat(sock).doesNotExist();
    }

    @Test
    void staleSocketFileIsReplaced() throws Exception {
        Path sock = dir.resolve("vu.sock");
        UnixSocket.listen(sock, 1).close(); // a crashed server: the file stays, nobody accepts
        assertThat(sock).exists();
        RecordingDevice dev = new RecordingDevice(2);
        try (VhostUserServer server = VhostUserServer.listen(sock, dev)) {
            BackendHarness.assertServesFully(server, sock, dev);
        }
    }

    /**
     * Several backends start at once on the same stale socket file: exactly one serves the path, the others are
     * refused, and none deletes the winner's new socket (each probes, removes and binds under one lock).
     */
    @Test
    @Timeout(60)
    void backendsRacingForOneStalePathLeaveExactlyOneServing() throws Exception {
        for (int trial = 0; trial < 20; trial++) {
            Path sock = dir.resolve("race" + trial + ".sock");
            UnixSocket.listen(sock, 1).close(); // stale
            int n = 4;
            java.util.concurrent.CyclicBarrier start = new java.util.concurrent.CyclicBarrier(n);
            java.util.List<java.util.concurrent.Future<VhostUserServer>> results = new java.util.ArrayList<>();
            try (var pool = java.util.concurrent.Executors.newFixedThreadPool(n)) {
                for (int i = 0; i < n; i++) {
                    results.add(pool.submit(() -> {
                        start.await();
                        return VhostUserServer.listen(sock, new RecordingDevice(1));
                    }));
                }
            }
            java.util.List<VhostUserServer> won = new java.util.ArrayList<>();
            for (var f : results) {
                try {
                    won.add(f.get());
                } catch (java.util.concurrent.ExecutionException e) {
                    assertThat(e.getCause()).isInstanceOf(VhostUserException.class)
                            .hasMessageContaining("served by another live process");
                }
            }
            try {
                assertThat(won).as("servers listening on %s", sock).hasSize(1);
                RecordingDevice dev = new RecordingDevice(2);
                assertThat(sock).exists();
                try (UnixSocket c = UnixSocket.connect(sock)) {
                    assertThat(c).as("the winner's socket is the one at the path").isNotNull();
                }
            } finally {
                for (VhostUserServer w : won) {
                    w.close();
                }
            }
        }
        try (var names = Files.list(dir)) {
            assertThat(names.map(p -> p.getFileName().toString())).as("nothing left behind").isEmpty();
        }
    }

    @Test
    void pathServedByALiveListenerIsRefused() throws Exception {
        Path sock = dir.resolve("vu.sock");
        try (UnixSocket live = UnixSocket.listen(sock, 4)) {
            assertThatThrownBy(() -> VhostUserServer.listen(sock, new RecordingDevice(1)))
                    .isInstanceOf(VhostUserException.class).hasMessageContaining("served by another live process");
            // The live listener still owns the path and still accepts.
            try (UnixSocket probe = live.accept(); UnixSocket c = UnixSocket.connect(sock); UnixSocket a = live.accept()) {
                assertThat(a).isNotNull();
            }
        }
    }

    @Test
    void pathServedByAnotherVhostUserServerIsRefusedAndKeepsWorking() throws Exception {
        Path sock = dir.resolve("vu.sock");
        RecordingDevice dev = new RecordingDevice(2);
        try (VhostUserServer first = VhostUserServer.listen(sock, dev)) {
            assertThatThrownBy(() -> VhostUserServer.listen(sock, new RecordingDevice(1)))
                    .isInstanceOf(VhostUserException.class).hasMessageContaining("served by another live process");
            assertThat(sock).exists();
            // The refused server's probe was a (very short) connection to the first one; it may still be in the way.
            for (int attempt = 0; ; attempt++) {
                try {
                    BackendHarness.assertServesFully(first, sock, dev);
                    break;
                } catch (RawPeer.Closed | io.mqvirtio.linux.ErrnoException e) {
                    if (attempt == 5) {
                        throw e;
                    }
                    Thread.sleep(50);
                }
            }
        }
    }

    @Test
    void otherKindsOfFileAreNotReplaced() throws Exception {
        Path file = dir.resolve("vu.sock");
        Files.writeString(file, "precious");
        assertThatThrownBy(() -> VhostUserServer.listen(file, new RecordingDevice(1)))
                .isInstanceOf(VhostUserException.class).hasMessageContaining("is not a socket");
        assertThat(Files.readString(file)).isEqualTo("precious");

        Path link = dir.resolve("link.sock");
        Files.createSymbolicLink(link, file);
        assertThatThrownBy(() -> VhostUserServer.listen(link, new RecordingDevice(1)))
                .isInstanceOf(VhostUserException.class).hasMessageContaining("is not a socket");
        assertThat(Files.isSymbolicLink(link)).isTrue();
    }

    @Test
    void closeLeavesASocketFileThatIsNoLongerOurs() throws Exception {
        Path sock = dir.resolve("vu.sock");
        VhostUserServer server = VhostUserServer.listen(sock, new RecordingDevice(1));
        try {
            Files.delete(sock);
            UnixSocket.listen(sock, 1).close(); // someone else's socket file now
        } finally {
            server.close();
        }
        assertThat(sock).exists();
    }

    @Test
    void secondFrontendIsRefusedWhileASessionRuns() throws Exception {
        Path sock = dir.resolve("vu.sock");
        RecordingDevice dev = new RecordingDevice(2);
        try (VhostUserServer server = VhostUserServer.listen(sock, dev); LogCapture log = new LogCapture()) {
            try (RawPeer first = RawPeer.connect(sock)) {
                BackendHarness.negotiate(first, BASIC_PF);
                for (int i = 0; i < 3; i++) {
                    try (RawPeer second = RawPeer.connect(sock)) {
                        second.expectClosed();
                    }
                }
                // The first is undisturbed.
                assertThat(first.get(Request.GET_QUEUE_NUM)).isEqualTo(2);
                assertThat(server.hasSession()).isTrue();
            }
            assertThat(log.lines()).anySatisfy(l -> assertThat(l).contains("refusing a frontend: a second frontend while a session runs"));
            BackendHarness.assertServesFully(server, sock, dev);
        }
    }

    @Test
    void closeEndsTheRunningSessionAndReturnsAfterTearDown() throws Exception {
        Path sock = dir.resolve("vu.sock");
        RecordingDevice dev = new RecordingDevice(2);
        VhostUserServer server = VhostUserServer.listen(sock, dev);
        try (RawPeer fe = RawPeer.connect(sock); GuestRam ram = new GuestRam();
             io.mqvirtio.linux.EventFd kick = io.mqvirtio.linux.EventFd.create();
             io.mqvirtio.linux.EventFd call = io.mqvirtio.linux.EventFd.create()) {
            BackendHarness.negotiate(fe, BASIC_PF);
            fe.ok(Request.SET_MEM_TABLE, ram.memTable(), ram.fd());
            BackendHarness.setupRing(fe, ram, 0, kick, call);
            assertThat(dev.running()).isEqualTo(1);
            long t0 = System.nanoTime();
            server.close();
            assertThat((System.nanoTime() - t0) / 1_000_000).as("close takes ms").isLessThan(3000);
            assertThat(server.hasSession()).isFalse();
            assertThat(dev.running()).isZero();
            assertThat(dev.calls()).endsWith("reset");
            fe.expectClosed();
        }
        assertThat(sock).doesNotExist();
    }

    /**
     * An inherited socket has other holders (systemd keeps its copy; a second serve may be started on the same unit's
     * sockets). One that takes the pending connection between our poll and our accept must not leave our accept
     * thread waiting in accept(2): close() waits for it a bounded time only, and a thread left there takes the next
     * connection, meant for whoever serves the socket next, and closes it. Here the test's own holder (three threads
     * that poll and accept as we do) races us for each new connection until we lose one, 100 at most.
     */
    @Test
    @Timeout(60)
    void anInheritedSocketsOtherHolderTakingTheConnectionNeverLeavesUsInAccept() throws Exception {
        Path sock = dir.resolve("shared.sock");
        String name = "shared-" + System.nanoTime();
        try (UnixSocket holder = UnixSocket.listen(sock, 16)) {
            UnixSocket ours = UnixSocket.adoptListening(holder.dup().fd()); // the server owns and closes this one
            java.util.concurrent.atomic.AtomicBoolean stop = new java.util.concurrent.atomic.AtomicBoolean();
            java.util.concurrent.atomic.AtomicInteger taken = new java.util.concurrent.atomic.AtomicInteger();
            Runnable holding = () -> {
                while (!stop.get()) {
                    try {
                        if (holder.poll(io.mqvirtio.linux.Fd.POLLIN, 20) == 0) {
                            continue;
                        }
                        UnixSocket c = holder.accept(); // as we do: whoever accepts first takes it
                        if (c == null) {
                            continue;
                        }
                        taken.incrementAndGet();
                        c.close();
                    } catch (RuntimeException e) {
                        return; // shut down by the test's cleanup
                    }
                }
            };
            // three threads of the other holder: each new connection wakes four pollers, and one accepts it
            java.util.List<Thread> others = java.util.stream.Stream.generate(() -> Thread.ofPlatform().daemon(true)
                    .start(holding)).limit(3).toList();
            VhostUserServer server = VhostUserServer.adopt(ours, name, new RecordingDevice(1),
                    VhostUserServer.Options.defaults());
            try {
                Thread acceptor = Thread.getAllStackTraces().keySet().stream()
                        .filter(t -> t.getName().equals("vhost-user-accept " + name)).findFirst().orElseThrow();
                // connections until our thread has sat in accept for 300 ms (then it is stuck there), 100 at most
                for (int i = 0; i < 100 && !sitsInAccept(acceptor); i++) {
                    int before = taken.get();
                    try (UnixSocket c = UnixSocket.connect(sock, 1000)) {
                        long deadline = System.nanoTime() + 1_000_000_000L;
                        while (taken.get() == before && !server.hasSession() && System.nanoTime() < deadline) {
                            Thread.sleep(1);
                        }
                    }
                    long deadline = System.nanoTime() + 2_000_000_000L;
                    while (server.hasSession() && System.nanoTime() < deadline) {
                        Thread.sleep(1);
                    }
                }
                long t0 = System.nanoTime();
                server.close();
                assertThat((System.nanoTime() - t0) / 1_000_000).as("close takes ms").isLessThan(3000);
                assertThat(acceptor.isAlive()).as("our accept thread, after close").isFalse();
                // the other holder stops; a connection made now waits in the backlog for the next serve
                stop.set(true);
                for (Thread other : others) {
                    other.join(2000);
                    assertThat(other.isAlive()).as("the test's holder stopped").isFalse();
                }
                try (UnixSocket later = UnixSocket.connect(sock, 1000)) {
                    Thread.sleep(300);
                    holder.setNonBlocking(true);
                    assertThat(holder.poll(io.mqvirtio.linux.Fd.POLLIN, 1000)).as("the later connection pending")
                            .isNotZero();
                    try (UnixSocket next = holder.accept()) {
                        assertThat(next).as("the later connection, for the next serve").isNotNull();
                        assertThat(later.poll(io.mqvirtio.linux.Fd.POLLIN, 0)).as("the later connection not closed")
                                .isZero();
                    }
                }
            } finally {
                server.close();
                stop.set(true);
                holder.shutdown(); // wakes the test's holder from accept
                for (Thread other : others) {
                    other.join(2000);
                }
            }
        }
    }

    /** Whether {@code t} is in accept(2) now and still, with no connection coming, 300 ms later. */
    private static boolean sitsInAccept(Thread t) throws InterruptedException {
        if (!inAccept(t)) {
            return false;
        }
        Thread.sleep(300);
        return inAccept(t);
    }

    private static boolean inAccept(Thread t) {
        for (StackTraceElement e : t.getStackTrace()) {
            if (e.getClassName().equals(UnixSocket.class.getName())) {
                return e.getMethodName().equals("accept");
            }
        }
        return false;
    }

    @Test
    void clientModeConnectsAndReconnectsAfterTheFrontendCloses() throws Exception {
        Path sock = dir.resolve("fe.sock");
        RecordingDevice dev = new RecordingDevice(2);
        // The backend starts first and keeps trying until the frontend listens.
        try (VhostUserServer server = VhostUserServer.connect(sock, dev)) {
            Thread.sleep(300);
            try (UnixSocket listener = UnixSocket.listen(sock, 4); Epoll ep = Epoll.create(1)) {
                ep.add(listener, Epoll.EPOLLIN, 0);
                for (int round = 0; round < 3; round++) {
                    assertThat(ep.await(5000)).as("the backend connects (round %d)", round).isEqualTo(1);
                    try (RawPeer fe = RawPeer.over(listener.accept())) {
                        BackendHarness.negotiate(fe, BASIC_PF);
                        assertThat(fe.get(Request.GET_MAX_MEM_SLOTS)).isEqualTo(Protocol.MAX_MEM_SLOTS);
                        if (round == 1) {
                            fe.send(Request.SET_VRING_NUM, RawPeer.state(0, 3)); // a failure without ack closes ...
                            fe.expectClosed();
                        }
                    } // ... and so does the frontend going away: either way the backend comes back
                }
            }
            Files.deleteIfExists(sock);
            server.close();
            assertThat(server.hasSession()).isFalse();
        }
    }

    /**
     * A frontend that listens but ends every session at once (QEMU server=on refusing our device, a misconfigured
     * peer) is reconnected to with the same backoff as one that does not listen: it used to be reconnected to
     * without a pause, thousands of sessions a second, each a thread and a dozen log lines.
     */
    @Test
    void clientModeBacksOffFromAFrontendThatEndsEverySessionAtOnce() throws Exception {
        Path sock = dir.resolve("fe.sock");
        RecordingDevice dev = new RecordingDevice(2);
        try (UnixSocket listener = UnixSocket.listen(sock, 4); Epoll ep = Epoll.create(1);
             LogCapture log = new LogCapture().quiet()) {
            ep.add(listener, Epoll.EPOLLIN, 0);
            int accepted = 0;
            try (VhostUserServer server = VhostUserServer.connect(sock, dev)) {
                long end = System.nanoTime() + 3_000_000_000L;
                while (System.nanoTime() < end) {
                    if (ep.await(50) > 0) {
                        listener.accept().close();
                        accepted++;
                    }
                }
            }
            // 100, 200, 400, 800 ms, then 1 s between sessions: a handful in 3 s
            assertThat(accepted).as("sessions in 3 s").isBetween(2, 10);
        }
    }

    /** The names in a directory. */
    private record Stream(java.util.stream.Stream<Path> s) implements AutoCloseable {
        Stream(Path dir) throws java.io.IOException {
            this(Files.list(dir));
        }

        java.util.List<String> names() {
            return s.map(p -> p.getFileName().toString()).toList();
        }

        @Override
        public void close() {
            s.close();
        }
    }
}
