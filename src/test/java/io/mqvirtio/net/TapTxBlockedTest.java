package io.mqvirtio.net;

import static io.mqvirtio.net.HostileDriverTest.await;
import static org.assertj.core.api.Assertions.assertThat;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import io.mqvirtio.backend.TapBackend;
import io.mqvirtio.linux.HostTap;
import io.mqvirtio.linux.IoUring;
import io.mqvirtio.linux.Tap;
import io.mqvirtio.linux.TestNetns;
import io.mqvirtio.vhostuser.VhostUserServer;
import io.mqvirtio.virtio.VirtioFeatures;
import io.mqvirtio.linux.Fd;
import io.mqvirtio.linux.IoVec;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.ThreadLocalRandom;
import java.util.stream.IntStream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

/**
 * A host that limits the TAP's send buffer (TUNSETSNDBUF through a queue of its own, as QEMU's {@code sndbuf=} does)
 * while the frames the guest sent are still held on the host (here: bridged to a second TAP behind a slow token
 * bucket): writev answers EAGAIN, and the worker gives the chain back to retry; io_uring answers EAGAIN too, and the
 * writer keeps that frame and those after it in its slots. Either must retry when the TAP has room again, with no
 * kick from the guest: a guest that queued its frames and waits for them to be used kicks no more. The worker once
 * waited for a kick only, and the TX ring stalled for good.
 */
@Timeout(60)
class TapTxBlockedTest {
    private static final long FEATURES = VirtioFeatures.bit(VirtioFeatures.F_VERSION_1) | VirtioFeatures.bit(VirtioNet.F_MQ);

    @TempDir
    Path dir;

    /**
     * The guest's frames all reach the host, in order, none dropped, with one kick from the guest, by writev (the
     * chain given back and taken again) and through io_uring (the frames the TAP had no room for kept in the writer's
     * slots, their chains already used, and written again in order). Through io_uring those frames used to be dropped
     * and counted: the frames after them in the batch could have gone out already. Now the batch's writes are linked,
     * so the first that finds no room cancels the rest.
     */
    @ParameterizedTest
    @EnumSource(value = TapBackend.TxMethod.class, names = {"WRITEV", "IO_URING"})
    void framesHeldBackByAFullSendBufferGoOutWhenItDrains(TapBackend.TxMethod how) throws Exception {
        // the limit set before our first frame: the queue's io_uring writer, set up by that frame, sees it and links
        // its writes from the start (set later, the first batch without room would drop)
        try (SlowHost h = new SlowHost(how, "100kbit", 8192)) { // a frame through every 80 ms
            offerAndSeeEveryFrameOut(h, 24);
            assertThat(h.dev.ioMethods()).contains(how == TapBackend.TxMethod.WRITEV ? "writev" : "io_uring");
        }
    }

    /**
     * The same through io_uring, with the host holding the frames for good (a bucket that lets 1 byte a second
     * through) until it lets them go. A TAP write that finds no room completes with EAGAIN only if it says RWF_NOWAIT:
     * without, io_uring armed a poll and retried it when the TAP had room, and the worker waited in io_uring_enter for
     * that completion, unable to take a command (the device was declared dead after 10 s). Now the frames the TAP has
     * no room for wait in the writer's 32 slots, the worker takes no more from the guest and does not spin (it
     * sleeps until the TAP's EPOLLOUT edge, whatever the guest kicks), and answers commands; when the host lets go,
     * every frame goes out in order, none dropped.
     */
    @Test
    void uringHoldsWhatTheTapHasNoRoomForWithoutWaitingOrSpinning() throws Exception {
        try (SlowHost h = new SlowHost(TapBackend.TxMethod.IO_URING, "8bit", 8192)) {
            int frames = 60;
            offer(h.d, 1, frames);
            h.tx.kick();
            Thread.sleep(300);
            int used = h.tx.usedIdx();
            assertThat(used).as("the worker stopped taking frames").isLessThan(1 + frames);
            long cpu = h.dev.workerCpuNanos()[0];
            for (int i = 0; i < 20; i++) {
                h.tx.kick(); // a guest that kicks on: nothing more is taken, nothing tried
                Thread.sleep(50);
            }
            assertThat((h.dev.workerCpuNanos()[0] - cpu) / 1_000_000).as("worker CPU over 1 s, ms").isLessThan(100);
            assertThat(h.tx.usedIdx()).as("nothing more taken while the TAP has no room").isEqualTo(used);
            h.dev.setMtu(1400); // a command: the worker takes it
            assertThat(h.dev.deadReason()).isNull();
            assertThat(h.counters().drops() + h.counters().errors()).as("nothing dropped").isZero();

            h.letGo(); // what the host held goes
            await(() -> h.tx.usedIdx() == 1 + frames, "every frame used");
            await(() -> h.counters().packets() == 1 + frames, "every frame sent");
            assertThat(h.counters().drops() + h.counters().errors()).as("nothing dropped").isZero();
            List<Integer> got = arrivals(h.slowQueue, 1 + frames);
            assertThat(got).as("in order (the host dropped those it held)").isSorted().doesNotHaveDuplicates();
            assertThat(got).as("the frames after those the host held all arrived").endsWith(frames);
            assertThat(h.dev.ioMethods()).containsExactly("readv", "io_uring");
            assertThat(h.tx.err.drain()).as("no ring broke").isZero();
        }
    }

    /**
     * TX blocked on a full TAP while frames for the guest wait on the same queue and the guest posts no RX buffers
     * (it need not). Re-arming the queue's fd for the EPOLLOUT edge reports EPOLLIN at once, which stays true: the
     * worker took any event of the fd as room again, popped the chain, wrote, was refused (EAGAIN), gave it back,
     * re-armed, and so on, a core at 100 % for as long as the host held the TAP full. Now only EPOLLOUT (or an error)
     * lets TX try again.
     */
    @ParameterizedTest
    @EnumSource(value = TapBackend.TxMethod.class, names = {"WRITEV", "IO_URING"})
    void aBlockedTxBesideFramesWaitingForRxBuffersDoesNotSpin(TapBackend.TxMethod how) throws Exception {
        try (SlowHost h = new SlowHost(how, "8bit", 8192)) {
            try {
                h.hostQueue.detach(); // frames from the host now all go to our queue
                IoVec v = new IoVec(1);
                try (Arena a = Arena.ofConfined()) {
                    MemorySegment b = a.allocate(100);
                    b.asSlice(0, 6).fill((byte) 0xff); // broadcast: the bridge floods it to our TAP
                    b.set(ValueLayout.JAVA_BYTE, 6, (byte) 0x02);
                    b.set(ValueLayout.JAVA_BYTE, 12, (byte) 0x88);
                    b.set(ValueLayout.JAVA_BYTE, 13, (byte) 0xb5);
                    for (int i = 0; i < 4; i++) {
                        v.clear();
                        v.add(b);
                        IoVec.writev(h.slowQueue, v);
                    }
                }
                offer(h.d, 1, 40);
                h.tx.kick();
                await(() -> h.tx.usedIdx() > 1, "TX going");
                Thread.sleep(300); // the send buffer full, TX blocked
                long cpu = h.dev.workerCpuNanos()[0];
                Thread.sleep(1000);
                assertThat((h.dev.workerCpuNanos()[0] - cpu) / 1_000_000).as("worker CPU over 1 s, ms").isLessThan(100);
                assertThat(h.tx.usedIdx()).as("TX blocked").isLessThan(41);
                assertThat(h.counters().drops() + h.counters().errors()).isZero();
                h.dev.setMtu(1400);
                assertThat(h.dev.deadReason()).isNull();
            } finally {
                h.letGo();
            }
            await(() -> h.tx.usedIdx() == 41, "every frame used once the host lets go");
            await(() -> h.counters().packets() == 41, "every frame sent");
        }
    }

    /**
     * A RARP announce (SEND_RARP, after a migration) the device injects while TX waits for room on a TAP the host
     * holds full: it used to be written once, found no room (EAGAIN) and was lost, unsaid (QEMU announces a few
     * times, but each one may meet the same full TAP). Now it is kept and goes out when the TAP has room, with every
     * frame of the guest's, in order, none dropped: after the frames taken before it, before those taken after it
     * (before, where the port kept frames from its flush, the round that sent them went on with the ring's next
     * frames and the announce came last).
     */
    @ParameterizedTest
    @EnumSource(value = TapBackend.TxMethod.class, names = {"WRITEV", "IO_URING"})
    void anAnnounceInjectedWhileTxWaitsForRoomGoesOutWhenTheTapDrains(TapBackend.TxMethod how) throws Exception {
        try (SlowHost h = new SlowHost(how, "8bit", 8192)) {
            int frames = 40;
            offer(h.d, 1, frames);
            h.tx.kick();
            await(() -> h.tx.usedIdx() > 1, "TX going");
            Thread.sleep(300); // the send buffer full, TX blocked
            assertThat(h.tx.usedIdx()).as("TX blocked").isLessThan(1 + frames);
            byte[] mac = {0x02, 0x11, 0x22, 0x33, 0x44, 0x55};
            int taken = h.tx.usedIdx(); // frames 0 .. taken - 1 went to the port (sent, or kept by it) before the announce
            h.dev.sendRarp(mac);
            assertThat(h.tx.usedIdx()).as("TX still blocked").isEqualTo(taken);
            h.letGo();
            await(() -> h.tx.usedIdx() == 1 + frames, "every frame used");
            await(() -> h.counters().packets() == 1 + frames, "every frame sent");
            assertThat(h.counters().drops() + h.counters().errors()).as("nothing dropped").isZero();
            List<Integer> order = new ArrayList<>(); // frames by seq, the announce as -1
            try (Arena a = Arena.ofConfined()) {
                MemorySegment buf = a.allocate(4096);
                long deadline = System.nanoTime() + 3_000_000_000L;
                while (!(order.contains(frames) && order.contains(-1)) && System.nanoTime() < deadline) {
                    if (h.slowQueue.poll(Fd.POLLIN, 100) == 0) {
                        continue;
                    }
                    long len = IoVec.read(h.slowQueue, buf.address(), buf.byteSize());
                    if (len >= 42 && buf.get(ValueLayout.JAVA_BYTE, 12) == (byte) 0x80
                            && buf.get(ValueLayout.JAVA_BYTE, 13) == (byte) 0x35
                            && Arrays.equals(buf.asSlice(6, 6).toArray(ValueLayout.JAVA_BYTE), mac)) {
                        order.add(-1);
                    } else if (len == 1000) {
                        byte[] f = buf.asSlice(0, len).toArray(ValueLayout.JAVA_BYTE);
                        for (int k = 0; k <= frames; k++) {
                            if (Arrays.equals(f, frame(k))) {
                                order.add(k);
                            }
                        }
                    }
                }
            }
            assertThat(order).as("the RARP announce reached the host").contains(-1);
            // before the ring's frames taken after it: those the port kept from before go first (io_uring's slots)
            assertThat(order.subList(0, order.indexOf(-1))).as("frames before the announce (taken before it: < %d)",
                    taken).allMatch(seq -> seq < taken);
        }
    }

    /**
     * An announce (SEND_RARP) for pair 0 while its queue is not active (no ring of the pair started and enabled: a
     * detached TAP queue refuses frames) is not sent and counts as a TX drop, as a frame of a disabled ring does and as
     * the announce's other losses (replaced, a detach, a reset) do; it was dropped unsaid.
     */
    @Test
    void anAnnounceForAPairNotActiveIsCountedAsADrop() {
        SequencePort port = new SequencePort();
        try (NetDevice dev = new NetDevice(NetDevice.Config.of("idle", 1), port)) {
            dev.sendRarp(new byte[] {0x02, 0x11, 0x22, 0x33, 0x44, 0x55}); // returns when the worker has taken it
            assertThat(port.sent).as("nothing sent").isEmpty();
            assertThat(dev.counters().get(1).drops()).as("pair 0's TX drops").isEqualTo(1);
        }
    }

    /**
     * A host that sets the TAP's send buffer below 4 bytes (TUNSETSNDBUF takes any size above 0): a write goes through
     * whenever nothing of ours is in flight, but poll never reports the TAP writable (sock_writeable: less than half
     * the buffer in use, and the count starts at 1), so its EPOLLOUT edge never comes. The worker waited for that edge
     * only, and the guest's TX stalled for good after the first write that found a frame of ours still held by the
     * host (the guest, waiting for its frames to be used, kicks no more). Now a blocked TX is tried again at each
     * upkeep (once a second): every frame goes out, in order, none dropped.
     */
    @ParameterizedTest
    @EnumSource(value = TapBackend.TxMethod.class, names = {"WRITEV", "IO_URING"})
    void aSendBufferTooSmallEverToPollWritableStillLetsEveryFrameOut(TapBackend.TxMethod how) throws Exception {
        // never writable to poll; a write fits while none of ours is held
        try (SlowHost h = new SlowHost(how, "100kbit", 2)) { // a frame through every 80 ms
            offerAndSeeEveryFrameOut(h, 6);
        }
    }

    /**
     * A TX ring stopped (GET_VRING_BASE) and started again (SET_VRING_KICK, as a frontend that resets its device or
     * a migration does) while it waited for room on a TAP whose send buffer is too small ever to poll writable: the
     * restarted ring tries at once, and its next frame goes out (the host let the one before go meanwhile). Before,
     * the worker's wait for room outlived the restart, and the restarted ring's first write waited for the next
     * upkeep, up to a second. Each round starts just after an upkeep wrote a frame, so that the next is a second away.
     */
    @ParameterizedTest
    @EnumSource(value = TapBackend.TxMethod.class, names = {"WRITEV", "IO_URING"})
    void aTxRingRestartedWhileWaitingForRoomTriesAtOnce(TapBackend.TxMethod how) throws Exception {
        try (SlowHost h = new SlowHost(how, "100kbit", 2)) { // a frame through every 80 ms, never writable to poll
            offer(h.d, 1, 16);
            h.tx.kick();
            for (int round = 0; round < 3; round++) {
                long before = h.counters().packets();
                await(() -> h.counters().packets() > before, "a frame written (at an upkeep, or the kick)");
                long sent = h.counters().packets();
                Thread.sleep(200); // the host lets that frame go: the TAP has room, and no edge says so
                assertThat(h.counters().packets()).as("round %d: waiting for room", round).isEqualTo(sent);
                h.d.fe.setVringBase(1, h.d.fe.getVringBase(1));
                h.d.fe.setVringEnable(1, true);
                long t0 = System.nanoTime();
                h.d.fe.setVringKick(1, h.tx.kick);
                while (h.counters().packets() == sent && System.nanoTime() - t0 < 3_000_000_000L) {
                    Thread.sleep(1);
                }
                assertThat((System.nanoTime() - t0) / 1_000_000).as("round %d: ms from the restart to the next frame"
                        + " written", round).isLessThan(300);
            }
            h.letGo(); // the rest at once
            await(() -> h.tx.usedIdx() == 17, "every frame used");
            await(() -> h.counters().packets() == 17, "every frame sent");
            assertThat(h.counters().drops() + h.counters().errors()).as("nothing dropped").isZero();
            assertThat(h.tx.err.drain()).as("no ring broke").isZero();
        }
    }

    /**
     * A guest on a TAP whose frames the host holds: in a namespace of the test's, our backend's one-queue TAP bridged
     * to a second TAP behind a token bucket of {@code rate} ({@link #bridgeToSlowTap}), the send buffer of every queue
     * of ours limited to {@code sndbuf} bytes (TUNSETSNDBUF through a queue of the host's, before the worker's first
     * frame), a device and an {@link EvilDriver} on it, and that first frame (frame 0) sent and counted: our queue is
     * attached. Skips the test without root, or for io_uring where the kernel has none.
     */
    private final class SlowHost implements AutoCloseable {
        final Tap slowQueue;
        final Tap hostQueue;
        final NetDevice dev;
        final EvilDriver d;
        final EvilDriver.Ring tx;
        private final TestNetns ns;
        private final String slow;
        private final List<AutoCloseable> open = new ArrayList<>(); // closed last first

        SlowHost(TapBackend.TxMethod how, String rate, int sndbuf) throws Exception {
            assumeTrue(TestNetns.isRoot(), "needs root");
            assumeTrue(how != TapBackend.TxMethod.IO_URING || IoUring.unavailable() == null, "no io_uring");
            String id = Integer.toHexString(ThreadLocalRandom.current().nextInt(0x10000));
            String tap = "mqvb" + id;
            slow = "mqvs" + id;
            ns = TestNetns.create();
            open.add(ns);
            try {
                ns.exec("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1");
                TapBackend backend = ns.inside(() -> TapBackend.open(tap, 1, how));
                open.add(backend);
                slowQueue = ns.inside(() -> Tap.openQueue(slow, false));
                open.add(slowQueue);
                hostQueue = ns.inside(() -> Tap.openQueue(tap, true));
                open.add(hostQueue);
                bridgeToSlowTap(ns, tap, slow, rate);
                dev = new NetDevice(NetDevice.Config.of("tapblocked", 1), backend);
                open.add(dev);
                VhostUserServer server = VhostUserServer.listen(dir.resolve("b.sock"), dev);
                open.add(server);
                d = new EvilDriver(server.path(), 1, 64, FEATURES, 1 << 20);
                open.add(d);
                tx = d.tx(0);
                HostTap.setSendBuffer(hostQueue, sndbuf); // every queue, ours when it is attached
                HostileDriverTest.sendValid(d, 0, frame(0), 0);
                await(() -> counters().packets() == 1, "the first frame sent (our queue attached)");
            } catch (Exception | Error e) {
                close();
                throw e;
            }
        }

        /** Our pair's TX counters. */
        QueueCounters.Snapshot counters() {
            return dev.counters().get(1);
        }

        /** The host lets go of what it holds: the token bucket goes. */
        void letGo() throws Exception {
            ns.exec("tc", "qdisc", "del", "dev", slow, "root");
        }

        @Override
        public void close() throws Exception {
            Exception first = null;
            for (int i = open.size() - 1; i >= 0; i--) {
                try {
                    open.get(i).close();
                } catch (Exception e) {
                    if (first == null) {
                        first = e;
                    }
                }
            }
            open.clear();
            if (first != null) {
                throw first;
            }
        }
    }

    /**
     * The sequence numbers of our frames that reached {@code q} (the slow TAP's queue: what the bridge flooded to it),
     * each checked byte for byte, until {@code n} came or none came for 3 s.
     */
    /**
     * Offers {@code frames} frames after the first and kicks once (the guest then waits for them to be used): every
     * one is used without another kick, sent (none dropped, no error, no ring broken) and reaches the host in order.
     */
    private static void offerAndSeeEveryFrameOut(SlowHost h, int frames) throws Exception {
        offer(h.d, 1, frames);
        h.tx.kick(); // once: the guest now waits for its frames to be used
        await(() -> h.tx.usedIdx() == 1 + frames, "every frame used without another kick");
        await(() -> h.counters().packets() + h.counters().drops() == 1 + frames, "every frame counted");
        QueueCounters.Snapshot c = h.counters();
        assertThat(c.packets()).as("all sent, none dropped").isEqualTo(1 + frames);
        assertThat(c.drops() + c.errors()).isZero();
        assertThat(h.tx.err.drain()).as("no ring broke").isZero();
        assertThat(arrivals(h.slowQueue, 1 + frames)).as("what reached the host, in order")
                .isEqualTo(IntStream.rangeClosed(0, frames).boxed().toList());
    }

    private static List<Integer> arrivals(Tap q, int n) {
        List<Integer> got = new ArrayList<>();
        try (Arena a = Arena.ofConfined()) {
            MemorySegment buf = a.allocate(4096);
            long deadline = System.nanoTime() + 3_000_000_000L;
            while (got.size() < n && System.nanoTime() < deadline) {
                if (q.poll(Fd.POLLIN, 100) == 0) {
                    continue;
                }
                long len = IoVec.read(q, buf.address(), buf.byteSize());
                if (len != 1000 || buf.get(ValueLayout.JAVA_BYTE, 12) != (byte) 0x88
                        || buf.get(ValueLayout.JAVA_BYTE, 13) != (byte) 0xb5) {
                    continue;
                }
                deadline = System.nanoTime() + 3_000_000_000L;
                byte[] f = buf.asSlice(0, len).toArray(ValueLayout.JAVA_BYTE);
                int seq = -1;
                for (int k = 0; k < 256 && seq < 0; k++) {
                    if (Arrays.equals(f, frame(k))) {
                        seq = k;
                    }
                }
                assertThat(seq).as("a frame of ours, whole").isNotNegative();
                got.add(seq);
            }
        }
        return got;
    }

    /**
     * A bridge from {@code tap} to {@code slow}: our frames go to an unknown MAC, so the bridge floods them to the slow
     * TAP, whose token bucket ({@code rate}) holds them, and the send buffer they are charged to, until it lets them go.
     */
    private static void bridgeToSlowTap(TestNetns ns, String tap, String slow, String rate) throws Exception {
        ns.ip("link", "add", "br0", "type", "bridge");
        ns.ip("link", "set", tap, "master", "br0");
        ns.ip("link", "set", slow, "master", "br0");
        ns.exec("tc", "qdisc", "add", "dev", slow, "root", "tbf", "rate", rate, "burst", "1600", "limit", "1000000");
        for (String dev : new String[] {"br0", tap, slow}) {
            ns.ip("link", "set", dev, "up");
        }
    }

    /** Offers frames {@code first} .. {@code first + n - 1} on TX, descriptor i holding frame i; no kick. */
    private static void offer(EvilDriver d, int first, int n) {
        EvilDriver.Ring tx = d.tx(0);
        for (int i = first; i < first + n; i++) {
            long off = d.alloc(12 + 1000);
            d.mem.asSlice(off, 12).fill((byte) 0);
            MemorySegment.copy(MemorySegment.ofArray(frame(i)), 0, d.mem, off + 12, 1000);
            tx.desc(i, d.gpa(off), 12 + 1000, 0, 0);
            tx.offer(i);
        }
    }

    /** 1000 bytes to an unknown unicast MAC (the bridge floods it), local experimental ethertype, marked {@code seq}. */
    private static byte[] frame(int seq) {
        byte[] f = new byte[1000];
        for (int i = 0; i < f.length; i++) {
            f[i] = (byte) (seq * 31 + i);
        }
        byte[] head = {0x02, 0, 0, 0, 0x5e, (byte) 0x99, 0x02, 0, 0, 0, 0x5e, 0x01, (byte) 0x88, (byte) 0xb5};
        System.arraycopy(head, 0, f, 0, head.length);
        return f;
    }
}
