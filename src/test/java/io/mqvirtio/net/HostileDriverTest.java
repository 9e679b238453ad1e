package io.mqvirtio.net;

import static io.mqvirtio.virtio.SplitRing.*;
import static org.assertj.core.api.Assertions.assertThat;

import io.mqvirtio.backend.LoopbackBackend;
import io.mqvirtio.vhostuser.VhostUserServer;
import io.mqvirtio.virtio.VirtioFeatures;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.function.Consumer;
import java.util.function.BooleanSupplier;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * A malicious guest against a running backend: crafted ring states on one queue pair of one device, while another
 * pair of the same device and another device on another socket carry traffic. The broken ring stops (counted,
 * the frontend's error eventfd signalled); nothing else notices. On the receive side, the backend writes only into
 * buffers the guest marked writable and never past them, checked by a pattern around every buffer.
 */
class HostileDriverTest {
    static final int SIZE = 64;
    static final long FEATURES = VirtioFeatures.bit(VirtioFeatures.F_VERSION_1) | VirtioFeatures.bit(VirtioFeatures.F_INDIRECT_DESC)
            | VirtioFeatures.bit(VirtioNet.F_MQ) | VirtioFeatures.bit(VirtioNet.F_MRG_RXBUF);

    @TempDir
    Path dir;
    NetDevice victim;
    VhostUserServer victimServer;
    NetDevice bystander;
    VhostUserServer bystanderServer;

    @BeforeEach
    void start() {
        victim = new NetDevice(NetDevice.Config.of("victim", 2), new LoopbackBackend(2, 1500));
        victimServer = VhostUserServer.listen(dir.resolve("victim.sock"), victim);
        bystander = new NetDevice(NetDevice.Config.of("bystander", 1), new LoopbackBackend(1, 1500));
        bystanderServer = VhostUserServer.listen(dir.resolve("bystander.sock"), bystander);
    }

    @AfterEach
    void stop() {
        victimServer.close();
        victim.close();
        bystanderServer.close();
        bystander.close();
    }

    static void await(BooleanSupplier cond, String what) throws InterruptedException {
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(10);
        while (!cond.getAsBoolean()) {
            if (System.nanoTime() > deadline) {
                throw new AssertionError("timed out waiting for " + what);
            }
            Thread.sleep(10);
        }
    }

    /** A frame of {@code len} bytes with a recognisable pattern. */
    static byte[] frame(int len, int seed) {
        byte[] f = new byte[len];
        for (int i = 0; i < len; i++) {
            f[i] = (byte) (seed + i * 13);
        }
        f[12] = 0x08;
        f[13] = 0x00;
        return f;
    }

    /** Sends one valid frame on {@code pair}'s TX ring: header + frame in one readable buffer. */
    static long sendValid(EvilDriver d, int pair, byte[] f, int descIndex) {
        long off = writeFrame(d, f);
        EvilDriver.Ring tx = d.tx(pair);
        tx.desc(descIndex, d.gpa(off), 12 + f.length, 0, 0);
        tx.offer(descIndex);
        tx.kick();
        return off;
    }

    /** Posts {@code n} writable RX buffers of 2048 bytes on pair 0 (descriptors 0..n-1) and kicks: their offsets. */
    static long[] postRx(EvilDriver d, int n) {
        EvilDriver.Ring rx = d.rx(0);
        long[] bufs = new long[n];
        for (int i = 0; i < n; i++) {
            bufs[i] = d.alloc(2048);
            rx.desc(i, d.gpa(bufs[i]), 2048, DESC_F_WRITE, 0);
            rx.offer(i);
        }
        rx.kick();
        return bufs;
    }

    /** A zero header and {@code f} after it in fresh guest memory: its offset. */
    static long writeFrame(EvilDriver d, byte[] f) {
        long off = d.alloc(12 + f.length);
        d.mem.asSlice(off, 12).fill((byte) 0);
        MemorySegment.copy(MemorySegment.ofArray(f), 0, d.mem, off + 12, f.length);
        return off;
    }

    /** The next used RX entries of pair 0 are {@code sent}, in order, each whole in the buffer it names. */
    static void assertReceived(EvilDriver d, long[] rxBuf, List<byte[]> sent) {
        for (int i = 0; i < sent.size(); i++) {
            int[] u = d.rx(0).nextUsed();
            assertThat(u[1]).as("frame %d's length", i).isEqualTo(12 + sent.get(i).length);
            assertThat(d.mem.asSlice(rxBuf[u[0]] + 12, sent.get(i).length).toArray(ValueLayout.JAVA_BYTE))
                    .as("frame %d", i).isEqualTo(sent.get(i));
        }
    }

    /** Echo through the pair with real driver code on a real connection: proves a pair or device still works. */
    static void assertEchoes(Path sock, int pairs, int pair) throws Exception {
        try (NetDriver nic = NetDriver.connect(sock, NetDriver.Options.pairs(pairs)); Arena a = Arena.ofConfined()) {
            assertEchoes(nic.pair(pair), a);
        }
    }

    static void assertEchoes(NetQueuePair q, Arena a) throws InterruptedException {
        MemorySegment f = NetDriverContract.frame(a, q.index(), 1, 200);
        MemorySegment[] bufs = {a.allocate(2048)};
        int[] lens = new int[1];
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(10);
        int got = 0;
        boolean sent = false;
        while (got == 0 && System.nanoTime() < deadline) {
            if (!sent) {
                sent = q.send(f) == 1;
            }
            got = q.receive(bufs, lens, 1);
            Thread.sleep(1);
        }
        assertThat(got).as("a frame echoed on pair %d", q.index()).isEqualTo(1);
        assertThat(NetDriverContract.sameBytes(bufs[0], f, 200)).isTrue();
    }

    record Evil(String name, Consumer<EvilDriver> act) {
        @Override
        public String toString() {
            return name;
        }
    }

    static List<Evil> txAttacks() {
        List<Evil> l = new ArrayList<>();
        l.add(new Evil("descriptor loop", d -> {
            long off = d.alloc(64);
            d.tx(0).desc(0, d.gpa(off), 16, DESC_F_NEXT, 1);
            d.tx(0).desc(1, d.gpa(off + 16), 16, DESC_F_NEXT, 0);
            d.tx(0).offer(0);
        }));
        l.add(new Evil("head out of range", d -> d.tx(0).offer(SIZE + 5)));
        l.add(new Evil("next out of range", d -> {
            d.tx(0).desc(0, d.gpa(d.alloc(64)), 16, DESC_F_NEXT, 999);
            d.tx(0).offer(0);
        }));
        l.add(new Evil("address outside guest memory", d -> {
            d.tx(0).desc(0, 0x10, 64, 0, 0);
            d.tx(0).offer(0);
        }));
        l.add(new Evil("buffer across the end of guest memory", d -> {
            d.tx(0).desc(0, d.gpa(d.memSize - 8), 64, 0, 0);
            d.tx(0).offer(0);
        }));
        l.add(new Evil("nested indirect table", d -> {
            long t = d.alloc(64);
            d.mem.set(EvilDriver.U64, t, d.gpa(t));
            d.mem.set(EvilDriver.U32, t + 8, 16);
            d.mem.set(EvilDriver.U16, t + 12, (short) DESC_F_INDIRECT);
            d.tx(0).desc(0, d.gpa(t), 16, DESC_F_INDIRECT, 0);
            d.tx(0).offer(0);
        }));
        l.add(new Evil("indirect length not a multiple of 16", d -> {
            d.tx(0).desc(0, d.gpa(d.alloc(64)), 20, DESC_F_INDIRECT, 0);
            d.tx(0).offer(0);
        }));
        l.add(new Evil("indirect length zero", d -> {
            d.tx(0).desc(0, d.gpa(d.alloc(64)), 0, DESC_F_INDIRECT, 0);
            d.tx(0).offer(0);
        }));
        l.add(new Evil("readable after writable", d -> {
            long off = d.alloc(128);
            d.tx(0).desc(0, d.gpa(off), 64, DESC_F_NEXT | DESC_F_WRITE, 1);
            d.tx(0).desc(1, d.gpa(off + 64), 64, 0, 0);
            d.tx(0).offer(0);
        }));
        l.add(new Evil("avail index jump", d -> d.tx(0).setAvailIdx(SIZE * 3)));
        return l;
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("txAttacks")
    @Timeout(60)
    void brokenTxRingStopsOnlyItself(Evil attack) throws Exception {
        try (EvilDriver d = new EvilDriver(victimServer.path(), 2, SIZE, FEATURES, 1 << 20)) {
            attack.act().accept(d);
            d.tx(0).kick();
            await(() -> victim.counters().get(1).errors() > 0, "the TX ring of pair 0 to break");
            assertThat(d.tx(0).usedIdx()).as("nothing used from a broken ring").isZero();
            // the same device's other pair still forwards, as does a device on another socket
            sendValid(d, 1, frame(100, 7), 0);
            long off = d.alloc(2048);
            d.rx(1).desc(0, d.gpa(off), 2048, DESC_F_WRITE, 0);
            d.rx(1).offer(0);
            d.rx(1).kick();
            await(() -> d.rx(1).usedIdx() == 1, "pair 1 to echo a frame");
            int[] used = d.rx(1).nextUsed();
            assertThat(used[1]).isEqualTo(12 + 100);
            assertThat(d.mem.asSlice(off + 12, 100).toArray(ValueLayout.JAVA_BYTE)).isEqualTo(frame(100, 7));
            assertEchoes(bystanderServer.path(), 1, 0);
        }
    }

    /**
     * One TX burst of mixed chains through the burst path and the chain-by-chain one: one-buffer frames, a frame over
     * two descriptors between them, a one-buffer frame rewritten by the guest after it was offered (its new bytes go
     * out: the guest owns them until the device reads them), then a one-buffer chain outside guest memory. Every
     * frame before the bad chain reaches the port once, in ring order, and its chain is used; then the ring breaks (one
     * error) and nothing after it is taken.
     */
    @Test
    @Timeout(60)
    void aMixedBurstDeliversEveryFrameBeforeABadChainInOrder() throws Exception {
        try (EvilDriver d = new EvilDriver(victimServer.path(), 1, SIZE, FEATURES, 1 << 20)) {
            EvilDriver.Ring rx = d.rx(0);
            long[] rxBuf = postRx(d, 8);
            EvilDriver.Ring tx = d.tx(0);
            List<byte[]> sent = new ArrayList<>();
            int desc = 0;
            for (int i = 0; i < 6; i++) {
                byte[] f = frame(60 + 40 * i, 50 + i);
                long off = writeFrame(d, f);
                if (i == 2) { // header and frame in two descriptors
                    tx.desc(desc, d.gpa(off), 12, DESC_F_NEXT, desc + 1);
                    tx.desc(desc + 1, d.gpa(off + 12), f.length, 0, 0);
                    tx.offer(desc);
                    desc += 2;
                } else {
                    tx.desc(desc, d.gpa(off), 12 + f.length, 0, 0);
                    tx.offer(desc++);
                }
                if (i == 4) { // rewritten after it was offered, before the kick
                    f = frame(f.length, 99);
                    MemorySegment.copy(MemorySegment.ofArray(f), 0, d.mem, off + 12, f.length);
                }
                sent.add(f);
            }
            tx.desc(desc, d.gpa(d.memSize - 8), 64, 0, 0); // across the end of guest memory
            tx.offer(desc++);
            byte[] after = frame(80, 7);
            long off = d.alloc(12 + after.length);
            tx.desc(desc, d.gpa(off), 12 + after.length, 0, 0);
            tx.offer(desc);
            tx.kick();
            await(() -> victim.counters().get(1).errors() > 0, "the TX ring to break");
            await(() -> rx.usedIdx() == sent.size(), "the frames before the bad chain to come back");
            assertReceived(d, rxBuf, sent);
            Thread.sleep(100);
            assertThat(rx.usedIdx()).as("nothing after the bad chain").isEqualTo(sent.size());
            assertThat(tx.usedIdx()).as("the chains before the bad one are used, the ring broken after").isEqualTo(sent.size());
            assertThat(victim.counters().get(1).packets()).isEqualTo(sent.size());
            assertThat(victim.counters().get(1).errors()).isEqualTo(1);
        }
    }

    /**
     * Bursts of one-buffer frames reach a port that takes a burst in one call (the loopback), counted exactly; a frame
     * shorter than the virtio-net header inside a burst is an error of that queue, the burst's other frames still go
     * out in order, and the ring goes on.
     */
    @Test
    @Timeout(60)
    void aRuntInABurstIsCountedAndTheOtherFramesGoOutInOrder() throws Exception {
        try (EvilDriver d = new EvilDriver(victimServer.path(), 1, SIZE, FEATURES, 1 << 20)) {
            EvilDriver.Ring rx = d.rx(0);
            long[] rxBuf = postRx(d, 16);
            EvilDriver.Ring tx = d.tx(0);
            List<byte[]> sent = new ArrayList<>();
            long bytes = 0;
            int desc = 0;
            for (int round = 0; round < 2; round++) { // a burst with a runt in it, then one without
                for (int i = 0; i < 6; i++) {
                    if (round == 0 && i == 3) {
                        tx.desc(desc, d.gpa(d.alloc(16)), 8, 0, 0); // 8 bytes: not even the header
                        tx.offer(desc++);
                        continue;
                    }
                    byte[] f = frame(60 + 30 * i + round, 20 * round + i);
                    tx.desc(desc, d.gpa(writeFrame(d, f)), 12 + f.length, 0, 0);
                    tx.offer(desc++);
                    sent.add(f);
                    bytes += f.length;
                }
                tx.kick();
                int want = sent.size();
                await(() -> rx.usedIdx() == want, "the burst's frames to come back");
            }
            assertReceived(d, rxBuf, sent);
            await(() -> tx.usedIdx() == 12, "every TX chain used, the runt too");
            QueueCounters.Snapshot c = victim.counters().get(1);
            assertThat(c.packets()).isEqualTo(sent.size());
            assertThat(c.bytes()).isEqualTo(bytes);
            assertThat(c.errors()).as("the runt").isEqualTo(1);
        }
        assertEchoes(victimServer.path(), 2, 0);
    }

    @Test
    @Timeout(60)
    void errorEventfdIsSignalled() throws Exception {
        try (EvilDriver d = new EvilDriver(victimServer.path(), 2, SIZE, FEATURES, 1 << 20)) {
            d.tx(0).offer(SIZE + 1);
            d.tx(0).kick();
            await(() -> d.tx(0).err.drain() > 0, "the error eventfd");
        }
    }

    @Test
    @Timeout(60)
    void kickStormsWithNothingPosted() throws Exception {
        try (EvilDriver d = new EvilDriver(victimServer.path(), 2, SIZE, FEATURES, 1 << 20);
             NetDriver other = NetDriver.connect(bystanderServer.path(), NetDriver.Options.pairs(1));
             Arena a = Arena.ofConfined()) {
            long end = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(1500);
            long kicks = 0;
            while (System.nanoTime() < end) {
                for (int i = 0; i < 1000; i++) {
                    d.tx(0).kick();
                    d.rx(0).kick();
                }
                kicks += 2000;
            }
            assertEchoes(other.pair(0), a);
            assertThat(victim.counters().get(1).errors()).isZero();
            assertThat(kicks).isPositive();
        }
    }

    /**
     * The receive side's bursts (one-buffer chains big enough for any frame): frames land in them in ring order, each
     * with num_buffers 1, and nothing past a frame's end is touched (all memory filled with a pattern first). Then a
     * buffer too small for a full-size frame (chain by chain from there: with MRG_RXBUF the next frame gathers it and
     * the next chain) and a buffer outside guest memory: the ring breaks there (one error), after the frames before,
     * and nothing lands in either.
     */
    @Test
    @Timeout(60)
    void receiveBurstsWriteOnlyTheirFramesAndStopAtABadBuffer() throws Exception {
        try (EvilDriver d = new EvilDriver(victimServer.path(), 1, SIZE, FEATURES, 1 << 20)) {
            byte pattern = (byte) 0x5A;
            d.mem.asSlice(d.dataOff).fill(pattern);
            EvilDriver.Ring rx = d.rx(0);
            int[] sizes = {2048, 2048, 1600, 2048, 2048}; // 1600: a little over the largest frame, still a burst's
            long[] buf = new long[sizes.length + 1];
            for (int i = 0; i < sizes.length; i++) {
                buf[i] = d.alloc(sizes[i]);
                rx.desc(i, d.gpa(buf[i]), sizes[i], DESC_F_WRITE, 0);
            }
            // a buffer too small for a full-size frame (chain by chain from here), then one outside memory
            buf[sizes.length] = d.alloc(700);
            rx.desc(sizes.length, d.gpa(buf[sizes.length]), 700, DESC_F_WRITE, 0);
            rx.desc(sizes.length + 1, d.gpa(d.memSize - 8), 2048, DESC_F_WRITE, 0);
            for (int i = 0; i < sizes.length + 2; i++) {
                rx.offer(i);
            }
            rx.kick();
            List<byte[]> sent = new ArrayList<>();
            long[] txOff = new long[sizes.length + 2];
            for (int i = 0; i < sizes.length + 2; i++) {
                byte[] f = frame(100 + 111 * i, 20 + i);
                sent.add(f);
                txOff[i] = sendValid(d, 0, f, i);
                int want = i + 1;
                await(() -> d.tx(0).usedIdx() == want, "TX of frame " + want);
            }
            await(() -> victim.counters().get(0).errors() > 0, "the RX ring to break at the bad buffer");
            await(() -> rx.usedIdx() == sizes.length, "the frames before the bad buffer");
            Thread.sleep(100);
            assertThat(rx.usedIdx()).as("nothing after the burst's buffers").isEqualTo(sizes.length);
            assertThat(victim.counters().get(0).errors()).isEqualTo(1);
            boolean[] allowed = new boolean[(int) d.memSize];
            for (int i = 0; i < sizes.length + 2; i++) { // what the driver wrote itself: the TX frames
                for (long b = txOff[i]; b < txOff[i] + 12 + sent.get(i).length; b++) {
                    allowed[(int) b] = true;
                }
            }
            for (int i = 0; i < sizes.length; i++) {
                int[] u = rx.nextUsed();
                assertThat(u[0]).as("used in ring order").isEqualTo(i);
                byte[] f = sent.get(i);
                assertThat(u[1]).as("frame %d's used length", i).isEqualTo(12 + f.length);
                assertThat(d.mem.get(EvilDriver.U16, buf[i] + 10)).as("num_buffers").isEqualTo((short) 1);
                assertThat(d.mem.asSlice(buf[i] + 12, f.length).toArray(ValueLayout.JAVA_BYTE)).isEqualTo(f);
                for (long b = buf[i]; b < buf[i] + 12 + f.length; b++) {
                    allowed[(int) b] = true;
                }
            }
            byte[] all = d.mem.asSlice(0, d.memSize).toArray(ValueLayout.JAVA_BYTE);
            for (int b = (int) d.dataOff; b < all.length; b++) {
                if (!allowed[b]) {
                    assertThat(all[b]).as("byte %d, outside every frame", b).isEqualTo(pattern);
                }
            }
        }
    }

    /**
     * The receive side with mergeable buffers: chains of every awkward shape, all guest memory filled with a pattern
     * first. After frames arrive, every byte the backend was not allowed to write still holds the pattern, used
     * lengths never exceed a chain's writable length, and the frame lies in the writable buffers in order.
     */
    @Test
    @Timeout(60)
    void receiveWritesOnlyIntoWritableBuffers() throws Exception {
        try (EvilDriver d = new EvilDriver(victimServer.path(), 1, SIZE, FEATURES, 1 << 20)) {
            byte pattern = (byte) 0xA5;
            d.mem.asSlice(d.dataOff).fill(pattern);
            EvilDriver.Ring rx = d.rx(0);
            List<long[]> writable = new ArrayList<>(); // {offset, length} the backend may write
            List<long[]> chains = new ArrayList<>();   // per chain: head, writable bytes
            // chain A: a read-only buffer, then a writable one just big enough for the header (a shorter one breaks
            // the ring: WorkerStallTest)
            long a0 = d.alloc(256), a1 = d.alloc(12);
            rx.desc(0, d.gpa(a0), 256, DESC_F_NEXT, 1);
            rx.desc(1, d.gpa(a1), 12, DESC_F_WRITE, 0);
            writable.add(new long[] {a1, 12});
            chains.add(new long[] {0, 12});
            // chain B: two small writable pieces
            long b0 = d.alloc(30), b1 = d.alloc(50);
            rx.desc(2, d.gpa(b0), 30, DESC_F_WRITE | DESC_F_NEXT, 3);
            rx.desc(3, d.gpa(b1), 50, DESC_F_WRITE, 0);
            writable.add(new long[] {b0, 30});
            writable.add(new long[] {b1, 50});
            chains.add(new long[] {2, 80});
            // chains C..: one 700-byte buffer each, plenty for the frames
            for (int i = 0; i < 8; i++) {
                long c = d.alloc(700);
                rx.desc(4 + i, d.gpa(c), 700, DESC_F_WRITE, 0);
                writable.add(new long[] {c, 700});
                chains.add(new long[] {4 + i, 700});
            }
            for (long[] c : chains) {
                rx.offer((int) c[0]);
            }
            rx.kick();
            // two frames through the loopback: 1000 and 300 bytes
            byte[] f1 = frame(1000, 1);
            byte[] f2 = frame(300, 2);
            writable.add(new long[] {sendValid(d, 0, f1, 0), 12 + f1.length}); // written by us, not the backend
            await(() -> d.tx(0).usedIdx() == 1, "TX of frame 1");
            writable.add(new long[] {sendValid(d, 0, f2, 1), 12 + f2.length});
            await(() -> d.tx(0).usedIdx() == 2, "TX of frame 2");
            long need = 12 + 1000 + 12 + 300;
            await(() -> {
                long total = 0;
                int n = (rx.usedIdx() - 0) & 0xffff;
                for (int i = 0; i < n; i++) {
                    total += d.mem.get(EvilDriver.U32, rx.usedOff + USED_RING + 8L * i + 4);
                }
                return total >= need;
            }, "both frames to arrive");
            int[] u;
            while ((u = rx.nextUsed()) != null) {
                int head = u[0];
                long cap = chains.stream().filter(c -> c[0] == head).findFirst().orElseThrow()[1];
                assertThat((long) u[1]).as("used length of chain %d", head).isLessThanOrEqualTo(cap);
            }
            // every byte outside the writable buffers still holds the pattern
            byte[] all = d.mem.asSlice(d.dataOff, d.memSize - d.dataOff).toArray(ValueLayout.JAVA_BYTE);
            boolean[] allowed = new boolean[all.length];
            for (long[] w : writable) {
                for (long i = w[0]; i < w[0] + w[1]; i++) {
                    allowed[(int) (i - d.dataOff)] = true;
                }
            }
            for (int i = 0; i < all.length; i++) {
                long off = d.dataOff + i;
                if (!allowed[i] && all[i] != pattern) {
                    throw new AssertionError("backend wrote outside a writable buffer at offset 0x" + Long.toHexString(off));
                }
            }
            assertThat(victim.counters().get(0).errors()).isZero();
        }
    }
}
