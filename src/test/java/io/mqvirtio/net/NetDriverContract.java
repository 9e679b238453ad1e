package io.mqvirtio.net;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicLong;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * The driver's behaviour against an echoing vhost-user backend, written once and run against each backend by a
 * subclass (ours with the loopback backend, DPDK testpmd's vhost PMD in io mode): frames sent on a queue pair come
 * back intact on the same pair, with 1, 2 and 4 pairs, and while the pair count changes under traffic; subclasses
 * also choose the ring layout and IN_ORDER ({@link #features()}).
 */
abstract class NetDriverContract {
    static final int MAX_PAIRS = 4;

    /** Starts an echoing backend serving {@code pairs} queue pairs; returns its socket. */
    abstract Path startBackend(int pairs) throws Exception;

    abstract void stopBackend() throws Exception;

    /** The features the driver asks for: all it knows by default (packed and IN_ORDER when offered). */
    long features() {
        return NetDriver.WANTED;
    }

    NetDriver.Options options(int pairs) {
        return NetDriver.Options.pairs(pairs).withFeatures(features());
    }

    @AfterEach
    void tearDownBackend() throws Exception {
        stopBackend();
    }

    /**
     * Waits until the backend forwards on each active pair of a driver just connected. A backend may drop what it
     * gets before it is fully started (DPDK's vhost PMD lets its RX queues run a moment before its TX queues when the
     * device comes up); by default nothing is waited for, so a backend that must not drop is held to it.
     */
    void awaitForwarding(NetDriver nic) throws Exception {
    }

    /** What the backend logged, for a failing assertion's message; empty when it keeps no log. */
    String backendLog() {
        return "";
    }

    NetDriver connect(Path sock, int pairs) throws Exception {
        NetDriver nic = NetDriver.connect(sock, options(pairs));
        try {
            awaitForwarding(nic);
        } catch (Exception | AssertionError e) {
            nic.close();
            throw e;
        }
        return nic;
    }

    /** A UDP/IPv4 frame of {@code len} bytes whose payload encodes pair, sequence number and a pattern. */
    static MemorySegment frame(Arena a, int pair, int seq, int len) {
        MemorySegment f = a.allocate(len);
        byte[] dst = {0x02, 0, 0, 0, 0, 0x01};
        byte[] src = {0x02, 0, 0, 0, 0, 0x02};
        MemorySegment.copy(MemorySegment.ofArray(dst), 0, f, 0, 6);
        MemorySegment.copy(MemorySegment.ofArray(src), 0, f, 6, 6);
        var be16 = ValueLayout.JAVA_SHORT_UNALIGNED.withOrder(ByteOrder.BIG_ENDIAN);
        var be32 = ValueLayout.JAVA_INT_UNALIGNED.withOrder(ByteOrder.BIG_ENDIAN);
        f.set(be16, 12, (short) 0x0800);
        f.set(ValueLayout.JAVA_BYTE, 14, (byte) 0x45);
        f.set(be16, 16, (short) (len - 14));
        f.set(ValueLayout.JAVA_BYTE, 22, (byte) 64);
        f.set(ValueLayout.JAVA_BYTE, 23, (byte) 17);
        f.set(be32, 26, 0x0a000002);
        f.set(be32, 30, 0x0a000001);
        f.set(be16, 34, (short) (1000 + pair));
        f.set(be16, 36, (short) 2000);
        f.set(be16, 38, (short) (len - 34));
        f.set(be32, 42, pair);
        f.set(be32, 46, seq);
        for (int i = 50; i < len; i++) {
            f.set(ValueLayout.JAVA_BYTE, i, (byte) (pair * 7 + seq + i));
        }
        return f;
    }

    static boolean sameBytes(MemorySegment a, MemorySegment b, int len) {
        return a.byteSize() >= len && b.byteSize() >= len && a.asSlice(0, len).mismatch(b.asSlice(0, len)) == -1;
    }

    @ParameterizedTest(name = "{0} pairs")
    @ValueSource(ints = {1, 2, 4})
    @Timeout(90)
    void framesComeBackIntactOnTheirPair(int pairs) throws Exception {
        Path sock = startBackend(MAX_PAIRS);
        try (NetDriver nic = connect(sock, pairs); Arena a = Arena.ofConfined()) {
            assertThat(nic.maxPairs()).isEqualTo(pairs);
            // both backends offer both layouts and IN_ORDER: what was negotiated is what was asked for
            for (int bit : new int[] {io.mqvirtio.virtio.VirtioFeatures.F_RING_PACKED, io.mqvirtio.virtio.VirtioFeatures.F_IN_ORDER}) {
                assertThat(io.mqvirtio.virtio.VirtioFeatures.has(nic.features(), bit)).as("feature %d negotiated", bit)
                        .isEqualTo(io.mqvirtio.virtio.VirtioFeatures.has(features(), bit));
            }
            for (int p = 0; p < pairs; p++) {
                NetQueuePair q = nic.pair(p);
                int count = 200;
                List<MemorySegment> sent = new ArrayList<>();
                for (int s = 0; s < count; s++) {
                    sent.add(frame(a, p, s, 60 + (s * 37) % 1400));
                }
                MemorySegment[] bufs = new MemorySegment[32];
                for (int i = 0; i < bufs.length; i++) {
                    bufs[i] = a.allocate(2048);
                }
                int[] lens = new int[32];
                int next = 0;
                int got = 0;
                long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(30);
                while (got < count && System.nanoTime() < deadline) {
                    if (next < count) {
                        int n = Math.min(16, count - next);
                        next += q.send(sent.subList(next, next + n).toArray(new MemorySegment[0]), 0, n);
                    }
                    int r = q.receive(bufs, lens, bufs.length);
                    for (int i = 0; i < r; i++) {
                        MemorySegment want = sent.get(got);
                        assertThat(lens[i]).as("length of frame %d on pair %d", got, p).isEqualTo((int) want.byteSize());
                        assertThat(sameBytes(bufs[i], want, lens[i])).as("bytes of frame %d on pair %d", got, p).isTrue();
                        got++;
                    }
                }
                assertThat(got).as("frames back on pair %d%n%s", p, backendLog()).isEqualTo(count);
                assertThat(q.rxCounters().errors()).isZero();
            }
        }
    }

    /**
     * Zero-copy send: frames written in place into the pair's TX buffers come back intact, in order, and more of
     * them than the ring holds (so buffers are reused); a writer that fails or returns a bad length gives its buffer
     * back and the frames written before it are still sent.
     */
    @Test
    @Timeout(60)
    void framesWrittenInPlaceComeBackIntact() throws Exception {
        Path sock = startBackend(MAX_PAIRS);
        try (NetDriver nic = connect(sock, 1); Arena a = Arena.ofConfined()) {
            NetQueuePair q = nic.pair(0);
            long sentBefore = q.txCounters().packets(); // what awaitForwarding sent
            int count = 1000;
            List<MemorySegment> sent = new ArrayList<>();
            for (int s = 0; s < count; s++) {
                sent.add(frame(a, 0, s, 60 + (s * 53) % 1400));
            }
            MemorySegment[] bufs = new MemorySegment[32];
            for (int i = 0; i < bufs.length; i++) {
                bufs[i] = a.allocate(2048);
            }
            int[] lens = new int[32];
            int[] next = {0};
            int got = 0;
            boolean failedOnce = false;
            boolean badOnce = false;
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(30);
            while (got < count && System.nanoTime() < deadline) {
                if (next[0] == 300 && !failedOnce) {
                    failedOnce = true;
                    int before = next[0];
                    assertThatThrownBy(() -> q.sendInPlace(8, (buf, i) -> {
                        if (i == 2) {
                            throw new IllegalStateException("writer failed");
                        }
                        MemorySegment f = sent.get(next[0]++);
                        MemorySegment.copy(f, 0, buf, 0, f.byteSize());
                        return (int) f.byteSize();
                    })).isInstanceOf(IllegalStateException.class);
                    assertThat(next[0]).as("two frames were written before the failure").isEqualTo(before + 2);
                } else if (next[0] == 600 && !badOnce) {
                    badOnce = true;
                    // a writer that sends on its own pair is refused, and nothing of its burst is sent
                    long before = q.txCounters().packets();
                    assertThatThrownBy(() -> q.sendInPlace(4, (buf, i) -> {
                        q.send(sent.get(0));
                        return 60;
                    })).isInstanceOf(IllegalStateException.class).hasMessageContaining("own pair");
                    assertThat(q.txCounters().packets()).isEqualTo(before);
                    assertThatThrownBy(() -> q.sendInPlace(1, (buf, i) -> q.maxFrame() + 1))
                            .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("must be 14..");
                    assertThatThrownBy(() -> q.sendInPlace(1, (buf, i) -> 13)).isInstanceOf(IllegalArgumentException.class);
                } else if (next[0] < count && next[0] - got < 128) {
                    // at most half the RX ring in flight: a real backend (testpmd) drops what finds no RX buffer
                    int n = Math.min(16, count - next[0]);
                    q.sendInPlace(n, (buf, i) -> {
                        assertThat(buf.byteSize()).isEqualTo(q.maxFrame());
                        MemorySegment f = sent.get(next[0]++);
                        MemorySegment.copy(f, 0, buf, 0, f.byteSize());
                        return (int) f.byteSize();
                    });
                }
                int r = q.receive(bufs, lens, bufs.length);
                for (int i = 0; i < r; i++) {
                    MemorySegment want = sent.get(got);
                    assertThat(lens[i]).as("length of frame %d", got).isEqualTo((int) want.byteSize());
                    assertThat(sameBytes(bufs[i], want, lens[i])).as("bytes of frame %d", got).isTrue();
                    got++;
                }
            }
            assertThat(got).as("frames back%n%s", backendLog()).isEqualTo(count);
            assertThat(q.txCounters().packets() - sentBefore).isEqualTo(count);
        }
    }

    /**
     * The driver's memory file goes to the backend; a backend that truncated it would make the driver's next access
     * there a SIGBUS. Its size is sealed: no holder of the file can shrink or grow it, and traffic goes on.
     */
    @Test
    @Timeout(60)
    void theBackendCannotResizeTheDriversMemory() throws Exception {
        Path sock = startBackend(MAX_PAIRS);
        try (NetDriver nic = connect(sock, 1); Arena a = Arena.ofConfined()) {
            List<Path> files = new ArrayList<>();
            try (var fds = java.nio.file.Files.list(Path.of("/proc/self/fd"))) {
                for (Path fd : fds.toList()) {
                    try {
                        if (java.nio.file.Files.readSymbolicLink(fd).toString().startsWith("/memfd:mqvirtio-driver")) {
                            files.add(fd);
                        }
                    } catch (java.io.IOException gone) {
                        // the directory's own fd, closed as we listed it
                    }
                }
            }
            assertThat(files).as("the driver's memory file").isNotEmpty();
            for (Path f : files) {
                try (java.io.RandomAccessFile peer = new java.io.RandomAccessFile(f.toFile(), "rw")) {
                    long size = peer.length();
                    assertThatThrownBy(() -> peer.setLength(0)).isInstanceOf(java.io.IOException.class);
                    assertThatThrownBy(() -> peer.setLength(size + 4096)).isInstanceOf(java.io.IOException.class);
                    assertThat(peer.length()).isEqualTo(size);
                }
            }
            NetQueuePair q = nic.pair(0);
            MemorySegment f = frame(a, 0, 1, 100);
            assertThat(q.send(f)).isEqualTo(1);
            MemorySegment[] bufs = {a.allocate(2048)};
            int[] lens = new int[1];
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(10);
            int got = 0;
            while (got == 0 && System.nanoTime() < deadline) {
                got = q.receive(bufs, lens, 1);
            }
            assertThat(got).as("the frame back%n%s", backendLog()).isEqualTo(1);
            assertThat(sameBytes(bufs[0], f, 100)).isTrue();
        }
    }

    /** The UDP pseudo-header's sum for a frame made by {@link #frame}. */
    static long pseudoHeaderSum(MemorySegment f) {
        var be16 = ValueLayout.JAVA_SHORT_UNALIGNED.withOrder(ByteOrder.BIG_ENDIAN);
        long sum = Checksum.sum(f, 26, 8); // source and destination addresses
        sum += 17; // zero, protocol UDP
        sum += Short.toUnsignedInt(f.get(be16, 38)); // UDP length
        return sum;
    }

    /**
     * Checksum offload end to end: the frame leaves with only the pseudo-header's sum in its UDP checksum field;
     * whoever completes it (the backend, the driver before sending when the backend cannot, or the driver on receipt
     * when the frame comes back still partial), the frame that arrives carries a valid checksum.
     */
    /**
     * A single-threaded forwarder that sleeps in {@link NetQueuePair#awaitReady} (a frame to receive, or room in the
     * TX ring) whenever it can do nothing, on small rings so that the TX ring fills: every frame comes back intact
     * and in order, no wait times out while frames are on their way, and the loop does not spin (a wait that said
     * "ready" with nothing ready would turn it many times per frame). {@link NetQueuePair#awaitSend} says at once
     * that a ring with room has room.
     */
    @Test
    @Timeout(60)
    void aForwarderThatWaitsForFramesOrRoomGetsEveryFrameBack() throws Exception {
        Path sock = startBackend(MAX_PAIRS);
        int ring = 32;
        NetDriver nic = NetDriver.connect(sock, options(2).withRingSize(ring));
        try (nic; Arena a = Arena.ofConfined()) {
            awaitForwarding(nic);
            // a sender alone, as fast as it can, on pair 1: it fills the TX ring; a wait that says "room" is right
            NetQueuePair sender = nic.pair(1);
            assertThat(sender.awaitSend(0)).as("an empty ring has room").isTrue();
            MemorySegment[] burst = new MemorySegment[ring];
            java.util.Arrays.fill(burst, frame(a, 1, 0, 60));
            long before = sender.txCounters().packets();
            int waits = 0;
            long waited = 0;
            boolean roomSaid = false;
            for (int sent = 0; sent < 20_000; ) {
                int n = sender.send(burst, 0, Math.min(ring, 20_000 - sent));
                if (roomSaid) {
                    assertThat(n).as("a send after awaitSend said there was room").isPositive();
                }
                sent += n;
                roomSaid = n == 0;
                if (roomSaid) {
                    waits++;
                    long t0 = System.nanoTime();
                    assertThat(sender.awaitSend(5000)).as("room within 5 s (wait %d)", waits).isTrue();
                    waited += System.nanoTime() - t0;
                }
            }
            assertThat(sender.txCounters().packets() - before).isEqualTo(20_000);
            // woken by the backend's call, not by the end of a 50 ms slice of the wait (that would be 25 ms on average)
            assertThat(waits == 0 ? 0 : waited / waits / 1000).as("mean microseconds of %d waits for room", waits)
                    .isLessThan(10_000);

            NetQueuePair q = nic.pair(0);
            int count = 3000;
            MemorySegment[] sent = new MemorySegment[count];
            for (int s = 0; s < count; s++) {
                sent[s] = frame(a, 0, s, 60 + (s * 41) % 1400);
            }
            MemorySegment[] bufs = new MemorySegment[ring];
            for (int i = 0; i < bufs.length; i++) {
                bufs[i] = a.allocate(2048);
            }
            int[] lens = new int[ring];
            int next = 0;
            int got = 0;
            int loops = 0;
            int timeouts = 0;
            int txWaits = 0;
            while (got < count && timeouts < 3) {
                loops++;
                // at most a ring's worth on its way: a backend that finds no RX buffer drops (testpmd does)
                boolean mayGo = next < count && next - got < ring;
                int n = 0;
                if (mayGo) {
                    n = q.send(sent, next, Math.min(ring, Math.min(count - next, ring - (next - got))));
                    next += n;
                }
                int r = q.receive(bufs, lens, bufs.length);
                for (int i = 0; i < r; i++) {
                    assertThat(lens[i]).as("length of frame %d", got).isEqualTo((int) sent[got].byteSize());
                    assertThat(sameBytes(bufs[i], sent[got], lens[i])).as("bytes of frame %d", got).isTrue();
                    got++;
                }
                if (r == 0 && n == 0) {
                    int interest = NetQueuePair.RX_READY | (mayGo ? NetQueuePair.TX_ROOM : 0);
                    txWaits += mayGo ? 1 : 0;
                    int ready = q.awaitReady(interest, 5000);
                    assertThat(ready & ~interest).as("only what was asked").isZero();
                    timeouts += ready == 0 ? 1 : 0;
                }
            }
            assertThat(got).as("frames back (%d waits timed out)%n%s", timeouts, backendLog()).isEqualTo(count);
            assertThat(timeouts).isZero();
            assertThat(loops).as("turns of the loop for %d frames (%d waits for room)", count, txWaits)
                    .isLessThan(10 * count);
            assertThat(q.rxCounters().errors()).isZero();
        }
    }

    @Test
    @Timeout(60)
    void checksumOffloadArrivesComplete() throws Exception {
        Path sock = startBackend(MAX_PAIRS);
        try (NetDriver nic = connect(sock, 1); Arena a = Arena.ofConfined()) {
            NetQueuePair q = nic.pair(0);
            var be16 = ValueLayout.JAVA_SHORT_UNALIGNED.withOrder(ByteOrder.BIG_ENDIAN);
            MemorySegment f = frame(a, 0, 77, 300);
            f.set(be16, 40, (short) Checksum.fold(pseudoHeaderSum(f)));
            MemorySegment[] bufs = {a.allocate(2048)};
            int[] lens = new int[1];
            assertThat(q.sendWithChecksumOffload(f, 34, 6)).isEqualTo(1);
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(10);
            int got = 0;
            while (got == 0 && System.nanoTime() < deadline) {
                got = q.receive(bufs, lens, 1);
            }
            assertThat(got).as("the frame back%n%s", backendLog()).isEqualTo(1);
            MemorySegment r = bufs[0].asSlice(0, lens[0]);
            assertThat(lens[0]).isEqualTo(300);
            long total = pseudoHeaderSum(r) + Checksum.sum(r, 34, 300 - 34);
            assertThat(Checksum.fold(total)).as("UDP checksum verifies (features %s)",
                    io.mqvirtio.virtio.VirtioFeatures.list(nic.features())).isEqualTo(0xffff);
            assertThat(r.get(be16, 40)).as("a completed checksum, not the partial sum").isNotEqualTo(f.get(be16, 40));
            // everything but the checksum field is the frame that was sent
            assertThat(r.asSlice(0, 40).mismatch(f.asSlice(0, 40))).isEqualTo(-1L);
            assertThat(r.asSlice(42).mismatch(f.asSlice(42))).isEqualTo(-1L);
        }
    }

    @Test
    @Timeout(120)
    void pairCountChangesWhileTrafficRuns() throws Exception {
        Path sock = startBackend(MAX_PAIRS);
        try (NetDriver nic = connect(sock, MAX_PAIRS)) {
            AtomicBoolean stop = new AtomicBoolean();
            AtomicLong corrupt = new AtomicLong();
            AtomicLong[] echoed = new AtomicLong[MAX_PAIRS];
            List<Thread> threads = new ArrayList<>();
            for (int p = 0; p < MAX_PAIRS; p++) {
                echoed[p] = new AtomicLong();
                int pair = p;
                threads.add(Thread.ofPlatform().name("pair-" + p).start(() -> {
                    try (Arena a = Arena.ofConfined()) {
                        NetQueuePair q = nic.pair(pair);
                        MemorySegment[] bufs = {a.allocate(2048), a.allocate(2048), a.allocate(2048), a.allocate(2048)};
                        int[] lens = new int[4];
                        int seq = 0;
                        while (!stop.get()) {
                            MemorySegment f = frame(a, pair, seq, 128);
                            if (q.send(f) == 1) {
                                seq++;
                            }
                            int r = q.receive(bufs, lens, 4);
                            for (int i = 0; i < r; i++) {
                                // whatever comes back must be a frame of this pair, intact
                                var be32 = ValueLayout.JAVA_INT_UNALIGNED.withOrder(ByteOrder.BIG_ENDIAN);
                                int s = bufs[i].get(be32, 46);
                                if (lens[i] != 128 || bufs[i].get(be32, 42) != pair
                                        || !sameBytes(bufs[i], frame(a, pair, s, 128), 128)) {
                                    corrupt.incrementAndGet();
                                }
                                echoed[pair].incrementAndGet();
                            }
                            if (r == 0) {
                                Thread.onSpinWait();
                            }
                        }
                    }
                }));
            }
            int[] steps = {2, 4, 1, 3, 4};
            for (int n : steps) {
                Thread.sleep(400);
                nic.setQueuePairs(n);
                assertThat(nic.activePairs()).isEqualTo(n);
                long[] before = snapshot(echoed);
                // every active pair echoes again, within a bound that a loaded machine's scheduler cannot miss
                long progressBy = System.nanoTime() + TimeUnit.SECONDS.toNanos(10);
                for (int p = 0; p < n; p++) {
                    while (echoed[p].get() <= before[p] && System.nanoTime() < progressBy) {
                        Thread.sleep(10);
                    }
                    assertThat(echoed[p].get()).as("pair %d echoes with %d pairs active%n%s", p, n, backendLog())
                            .isGreaterThan(before[p]);
                }
                Thread.sleep(200);
                for (int p = n; p < MAX_PAIRS; p++) {
                    assertThat(nic.pair(p).isEnabled()).isFalse();
                }
            }
            stop.set(true);
            for (Thread t : threads) {
                t.join(5000);
            }
            assertThat(corrupt.get()).isZero();
        }
    }

    private static long[] snapshot(AtomicLong[] c) {
        long[] s = new long[c.length];
        for (int i = 0; i < c.length; i++) {
            s[i] = c[i].get();
        }
        return s;
    }
}
