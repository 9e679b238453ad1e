package io.mqvirtio.net;

import static org.assertj.core.api.Assertions.assertThat;

import io.mqvirtio.vhostuser.Frontend;
import io.mqvirtio.virtio.PackedRing;
import io.mqvirtio.virtio.VirtioFeatures;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.locks.LockSupport;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * A packed ring stopped right after a chain of two descriptors resumes exactly where it stopped: after
 * GET_VRING_BASE and a SET_VRING_BASE of the base it gave (a migration's switch-over seen from one backend, QEMU's
 * stop and cont), and after the session restarts it itself for a new memory table. The descriptor before the stop
 * position is then the chain's second one, which keeps the driver's flags: the guess made for a frontend's base after
 * a backend died (one slot per chain) took the exact base for a stale one and resumed one slot back, at that second
 * descriptor, which is available in the ring's lap: the device sent half of an old frame again and wrote its used
 * descriptor where the driver does not look, and the driver's next frame was never used.
 */
@Timeout(30)
class PackedStopResumeTest {
    static final int SIZE = 8;
    static final ValueLayout.OfInt LE32 = ValueLayout.JAVA_INT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);

    @TempDir
    Path dir;

    @ParameterizedTest(name = "restart by {0}")
    @ValueSource(strings = {"GET_VRING_BASE", "SET_MEM_TABLE"})
    void resumesWhereItStoppedAfterAChainOfTwoDescriptors(String how) throws Exception {
        SequencePort port = new SequencePort();
        long features = VirtioFeatures.bit(VirtioFeatures.F_VERSION_1) | VirtioFeatures.bit(VirtioFeatures.F_RING_PACKED);
        try (NetDevice dev = new NetDevice(NetDevice.Config.of("resume", 1), port);
             io.mqvirtio.vhostuser.VhostUserServer server =
                     io.mqvirtio.vhostuser.VhostUserServer.listen(dir.resolve("r.sock"), dev);
             EvilDriver d = new EvilDriver(server.path(), 1, SIZE, features, 1 << 20)) {
            EvilDriver.Ring tx = d.tx(0);
            long buf = d.alloc(4096);
            sendInTwo(d, tx, buf, 0);
            awaitUsed(tx, 0);
            if (how.equals("GET_VRING_BASE")) {
                int base = d.fe.getVringBase(1);
                assertThat(base).as("TX stopped after two slots, wrap counters 1").isEqualTo(0x8002_8002);
                d.fe.setVringBase(1, base);
                d.fe.setVringKick(1, tx.kick);
                d.fe.setVringEnable(1, true);
            } else {
                // the same table again: the session stops the running rings and starts them on it
                d.fe.setMemTable(List.of(new Frontend.Region(d.base, d.memSize, d.base, 0, d.memfd)));
            }
            for (int seq = 1; seq < 5; seq++) {
                sendInTwo(d, tx, buf, seq);
                awaitUsed(tx, seq);
            }
            assertThat(new ArrayList<>(port.sent)).as("each frame sent once, in order").containsExactly(0, 1, 2, 3, 4);
            // a stale descriptor taken while the ring was started and not yet enabled is consumed and dropped
            assertThat(dev.counters().get(1).drops()).as("TX frames dropped").isZero();
            assertThat(dev.counters().get(1).packets()).as("TX frames").isEqualTo(5);
        }
    }

    /**
     * The same stop, resumed by another backend (a migration's destination, or a backend started again): a new device
     * that has only the frontend's base and the ring to go by. The ring reads as a clean stop at that base (a chain's
     * used descriptor followed by its second descriptor), so the base is taken; the guess from the USED bits alone
     * resumed a slot back.
     */
    @org.junit.jupiter.api.Test
    void anotherBackendResumesWhereTheFirstStoppedAfterAChainOfTwoDescriptors() throws Exception {
        SequencePort first = new SequencePort();
        SequencePort second = new SequencePort();
        long features = VirtioFeatures.bit(VirtioFeatures.F_VERSION_1) | VirtioFeatures.bit(VirtioFeatures.F_RING_PACKED);
        try (NetDevice dev = new NetDevice(NetDevice.Config.of("source", 1), first);
             io.mqvirtio.vhostuser.VhostUserServer server =
                     io.mqvirtio.vhostuser.VhostUserServer.listen(dir.resolve("a.sock"), dev);
             NetDevice dev2 = new NetDevice(NetDevice.Config.of("destination", 1), second);
             io.mqvirtio.vhostuser.VhostUserServer server2 =
                     io.mqvirtio.vhostuser.VhostUserServer.listen(dir.resolve("b.sock"), dev2);
             EvilDriver d = new EvilDriver(server.path(), 1, SIZE, features, 1 << 20)) {
            EvilDriver.Ring tx = d.tx(0);
            long buf = d.alloc(4096);
            for (int seq = 0; seq < 3; seq++) { // 6 slots of 8: the stop is in the first lap, after a chain of two
                sendInTwo(d, tx, buf, seq);
                awaitUsed(tx, seq);
            }
            int base = d.fe.getVringBase(1);
            assertThat(base).as("TX stopped after six slots, wrap counters 1").isEqualTo(0x8006_8006);
            try (Frontend fe = Frontend.connect(server2.path(), 5000)) {
                fe.setProtocolFeatures(fe.getProtocolFeatures() & (1L << io.mqvirtio.vhostuser.Protocol.PF_REPLY_ACK));
                fe.useReplyAck(true);
                fe.setOwner();
                fe.setFeatures(d.negotiated | (1L << io.mqvirtio.vhostuser.Protocol.F_PROTOCOL_FEATURES));
                fe.setMemTable(List.of(new Frontend.Region(d.base, d.memSize, d.base, 0, d.memfd)));
                fe.setVringNum(1, SIZE);
                fe.setVringBase(1, base);
                fe.setVringAddr(1, d.base + tx.descOff, d.base + tx.usedOff, d.base + tx.availOff);
                fe.setVringCall(1, tx.call);
                fe.setVringErr(1, tx.err);
                fe.setVringKick(1, tx.kick);
                fe.setVringEnable(1, true);
                for (int seq = 3; seq < 8; seq++) { // on into the second lap
                    sendInTwo(d, tx, buf, seq);
                    awaitUsed(tx, seq);
                }
                assertThat(new ArrayList<>(second.sent)).as("each frame sent once, in order, by the destination")
                        .containsExactly(3, 4, 5, 6, 7);
                assertThat(dev2.counters().get(1).drops()).as("TX frames dropped").isZero();
            }
            assertThat(new ArrayList<>(first.sent)).as("sent by the source").containsExactly(0, 1, 2);
        }
    }

    /**
     * A frontend shrinks its memory file under a burst (SIGBUS, which the JVM raises as an InternalError): the burst's
     * first chain was completed (its frame sent, or a frame received into it) when the second one, whose buffer lies
     * beyond the file's new end, faulted, and the ring broke. GET_VRING_BASE then reports a used position past the
     * first chain, so what the device completed must be visible to the driver: the frontend restores its memory (a
     * new memory table), restarts the ring at that base, and sees every chain used, in order. Before, the fault's
     * branch broke the ring without publishing: the restarted ring resumed past a chain the driver never saw used
     * (a TX buffer, or an RX buffer and its frame, lost; with IN_ORDER the driver's TX waits for it for good).
     */
    @ParameterizedTest(name = "{0}, in order {1}")
    @org.junit.jupiter.params.provider.CsvSource({"TX, false", "TX, true", "RX, false", "RX, true"})
    void whatABurstCompletedBeforeAFaultIsUsedAfterARestartAtTheReportedBase(String dir, boolean inOrder)
            throws Exception {
        boolean rx = dir.equals("RX");
        SequencePort port = new SequencePort();
        long memSize = 1 << 20, cut = memSize - 4096; // the file is cut here: the last page faults
        long features = VirtioFeatures.bit(VirtioFeatures.F_VERSION_1) | VirtioFeatures.bit(VirtioFeatures.F_RING_PACKED)
                | (inOrder ? VirtioFeatures.bit(VirtioFeatures.F_IN_ORDER) : 0);
        try (io.mqvirtio.vhostuser.LogCapture log = new io.mqvirtio.vhostuser.LogCapture();
             NetDevice dev = new NetDevice(NetDevice.Config.of("fault", 1), port);
             io.mqvirtio.vhostuser.VhostUserServer server =
                     io.mqvirtio.vhostuser.VhostUserServer.listen(this.dir.resolve("f.sock"), dev);
             EvilDriver d = new EvilDriver(server.path(), 1, SIZE, features, memSize)) {
            assertThat(d.negotiated & VirtioFeatures.bit(VirtioFeatures.F_IN_ORDER)).as("IN_ORDER").isEqualTo(
                    inOrder ? VirtioFeatures.bit(VirtioFeatures.F_IN_ORDER) : 0);
            EvilDriver.Ring q = rx ? d.rx(0) : d.tx(0);
            int index = rx ? 0 : 1;
            long good = d.alloc(4096);
            // chain 1 first (slot 1, and for TX slot 2), then chain 0 (slot 0): the device finds both in one burst
            if (rx) {
                port.frames.add(frame(0));
                port.frames.add(frame(1));
                q.packed(1, d.gpa(cut), 2048, 1, PackedRing.F_WRITE);
            } else {
                d.mem.set(LE32, good + 2048 + VirtioNet.HDR_SIZE, 0);
                q.packed(1, d.gpa(good + 2048), VirtioNet.HDR_SIZE, 1, PackedRing.F_NEXT);
                q.packed(2, d.gpa(cut), 60, 1, 0);
                d.mem.asSlice(good, 200).fill((byte) 0);
                d.mem.set(LE32, good + VirtioNet.HDR_SIZE, 0);
            }
            d.memfd.truncate(cut);
            q.packedAt(0, d.gpa(good), rx ? 2048 : VirtioNet.HDR_SIZE + 60, 0, 0);
            q.publishPacked(rx ? PackedRing.F_WRITE : 0, 1);
            q.kick();
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(3);
            while (dev.counters().get(index).errors() == 0) {
                assertThat(System.nanoTime()).as("the fault broke the ring within 3 s").isLessThan(deadline);
                LockSupport.parkNanos(1_000_000);
            }
            int base = d.fe.getVringBase(index);
            assertThat(base >>> 16).as("used position and wrap: chain 0 completed before the fault").isEqualTo(0x8001);
            d.memfd.truncate(memSize);
            if (rx) {
                port.frames.add(frame(2)); // frame 1 was lost with the fault; its buffer takes the next
            } else {
                d.mem.set(LE32, cut, 1); // the frame's part in the page the file lost
            }
            d.fe.setMemTable(List.of(new Frontend.Region(d.base, d.memSize, d.base, 0, d.memfd)));
            d.fe.setVringBase(index, base);
            d.fe.setVringEnable(index, true); // before the kick starts it: a disabled ring's TX frames are dropped
            d.fe.setVringKick(index, q.kick);
            q.kick();
            awaitUsed(q, 0, 1);
            if (rx) {
                assertThat(d.mem.get(LE32, good + VirtioNet.HDR_SIZE)).as("the frame in buffer 0").isEqualTo(0);
            }
            awaitUsed(q, 1, rx ? 1 : 2);
            if (rx) {
                assertThat(d.mem.get(LE32, cut + VirtioNet.HDR_SIZE)).as("the frame in buffer 1").isEqualTo(2);
            } else {
                assertThat(new ArrayList<>(port.sent)).as("each frame sent once, in order").containsExactly(0, 1);
            }
            assertNoWarningForOwnBase(log);
        }
    }

    /**
     * As above, with the ring's own memory gone when the burst publishes: the frontend shrinks its file (here to
     * nothing) just as the port took the burst's second frame, so the two chains are completed but their used
     * descriptors cannot be written. GET_VRING_BASE then reports a used position that counts only what the driver
     * can see (nothing), and a restart there, on the memory restored, takes both chains again (the frames are sent
     * again) and the driver sees both used. Before, the base counted the two completions no one could see: the
     * restarted ring resumed past them and the driver waited for them for good.
     */
    @org.junit.jupiter.api.Test
    void completionsThatCouldNotBePublishedAreNotCountedInTheBase() throws Exception {
        java.util.concurrent.atomic.AtomicReference<io.mqvirtio.linux.MemFd> shrink =
                new java.util.concurrent.atomic.AtomicReference<>();
        java.util.concurrent.ConcurrentLinkedQueue<Integer> sent = new java.util.concurrent.ConcurrentLinkedQueue<>();
        OnePortBackend backend = new OnePortBackend("shrinking") {
            @Override
            public Port open(int pair) {
                return new Port() {
                    @Override
                    public int readFd() {
                        return POLL;
                    }

                    @Override
                    public long send(io.mqvirtio.linux.IoVec frame) {
                        int seq = SequencePort.seq(frame);
                        sent.add(seq);
                        io.mqvirtio.linux.MemFd m = seq == 1 ? shrink.getAndSet(null) : null;
                        if (m != null) {
                            m.truncate(0); // the frontend, at this moment
                        }
                        return frame.totalBytes();
                    }

                    @Override
                    public long receive(io.mqvirtio.linux.IoVec into) {
                        return -1;
                    }

                    @Override
                    public void close() {}
                };
            }
        };
        long memSize = 1 << 20;
        long features = VirtioFeatures.bit(VirtioFeatures.F_VERSION_1) | VirtioFeatures.bit(VirtioFeatures.F_RING_PACKED);
        try (io.mqvirtio.vhostuser.LogCapture log = new io.mqvirtio.vhostuser.LogCapture();
             NetDevice dev = new NetDevice(NetDevice.Config.of("fault", 1), backend);
             io.mqvirtio.vhostuser.VhostUserServer server =
                     io.mqvirtio.vhostuser.VhostUserServer.listen(dir.resolve("p.sock"), dev);
             EvilDriver d = new EvilDriver(server.path(), 1, SIZE, features, memSize)) {
            EvilDriver.Ring tx = d.tx(0);
            long buf = d.alloc(4096);
            Runnable post = () -> { // chain 1, then chain 0: the device finds both in one burst
                for (int seq = 1; seq >= 0; seq--) {
                    d.mem.asSlice(buf + 512L * seq, 200).fill((byte) 0);
                    d.mem.set(LE32, buf + 512L * seq + VirtioNet.HDR_SIZE, seq);
                    tx.packed(seq, d.gpa(buf + 512L * seq), VirtioNet.HDR_SIZE + 60, seq, 0);
                }
            };
            shrink.set(d.memfd);
            post.run();
            tx.kick();
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(3);
            while (dev.counters().get(1).errors() == 0) {
                assertThat(System.nanoTime()).as("the fault broke the ring within 3 s").isLessThan(deadline);
                LockSupport.parkNanos(1_000_000);
            }
            int base = d.fe.getVringBase(1);
            assertThat(Integer.toHexString(base)).as("avail past both chains; used where the driver sees it: at the start")
                    .isEqualTo("80008002");
            d.memfd.truncate(memSize);
            d.fe.setMemTable(List.of(new Frontend.Region(d.base, d.memSize, d.base, 0, d.memfd)));
            post.run(); // the memory restored as the driver had it: both chains available, neither used
            d.fe.setVringBase(1, base);
            d.fe.setVringEnable(1, true);
            d.fe.setVringKick(1, tx.kick);
            tx.kick();
            awaitUsed(tx, 0, 1);
            awaitUsed(tx, 1, 1);
            assertThat(new ArrayList<>(sent)).as("both frames, then both again").containsExactly(0, 1, 0, 1);
            assertNoWarningForOwnBase(log);
        }
    }

    /**
     * The frontend shrinks its file just as a frame landed in an RX buffer of a burst (the port wrote it, the page is
     * then gone), so the device's own write of the frame's header (num_buffers) faults. That buffer must not be used:
     * the device never finished its frame. Before, it was completed before the header was written, and the break
     * published it with the burst's earlier frame: the driver got a used buffer whose header the device never wrote
     * (a mergeable driver reads num_buffers from it), and the base counted it. Now the base counts the first buffer
     * only, and after a restart there the second takes the next frame. Buffers of 2048 bytes come by bursts, of 1024
     * (less than an MTU-sized frame) chain by chain.
     */
    @ParameterizedTest(name = "buffers of {0} bytes")
    @ValueSource(ints = {2048, 1024})
    void anRxBufferWhoseHeaderCouldNotBeWrittenIsNotUsed(int bufLen) throws Exception {
        long memSize = 1 << 20, cut = memSize - 4096;
        java.util.concurrent.atomic.AtomicReference<io.mqvirtio.linux.MemFd> shrink =
                new java.util.concurrent.atomic.AtomicReference<>();
        java.util.concurrent.ConcurrentLinkedQueue<byte[]> frames = new java.util.concurrent.ConcurrentLinkedQueue<>();
        OnePortBackend backend = new OnePortBackend("shrinking") {
            @Override
            public Port open(int pair) {
                return new Port() {
                    @Override
                    public int readFd() {
                        return POLL;
                    }

                    @Override
                    public long send(io.mqvirtio.linux.IoVec frame) {
                        return frame.totalBytes();
                    }

                    @Override
                    public long receive(io.mqvirtio.linux.IoVec into) {
                        long len = receiveFrom(frames, into);
                        io.mqvirtio.linux.MemFd m = len > 0 && SequencePort.seq(into) == 1 ? shrink.getAndSet(null) : null;
                        if (m != null) {
                            m.truncate(cut); // the frontend, at this moment: the buffer's page is gone
                        }
                        return len;
                    }

                    @Override
                    public void close() {}
                };
            }
        };
        long features = VirtioFeatures.bit(VirtioFeatures.F_VERSION_1) | VirtioFeatures.bit(VirtioFeatures.F_RING_PACKED)
                | VirtioFeatures.bit(VirtioNet.F_MRG_RXBUF);
        try (NetDevice dev = new NetDevice(NetDevice.Config.of("fault", 1), backend);
             io.mqvirtio.vhostuser.VhostUserServer server =
                     io.mqvirtio.vhostuser.VhostUserServer.listen(dir.resolve("h.sock"), dev);
             EvilDriver d = new EvilDriver(server.path(), 1, SIZE, features, memSize)) {
            assertThat(d.negotiated & VirtioFeatures.bit(VirtioNet.F_MRG_RXBUF)).as("MRG_RXBUF").isNotZero();
            EvilDriver.Ring rx = d.rx(0);
            long good = d.alloc(4096);
            frames.add(frame(0));
            frames.add(frame(1));
            shrink.set(d.memfd);
            rx.packed(1, d.gpa(cut), bufLen, 1, PackedRing.F_WRITE); // chain 1 first: both in one burst
            rx.packedAt(0, d.gpa(good), bufLen, 0, 0);
            rx.publishPacked(PackedRing.F_WRITE, 1);
            rx.kick();
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(3);
            while (dev.counters().get(0).errors() == 0) {
                assertThat(System.nanoTime()).as("the fault broke the ring within 3 s").isLessThan(deadline);
                LockSupport.parkNanos(1_000_000);
            }
            int base = d.fe.getVringBase(0);
            assertThat(Integer.toHexString(base >>> 16)).as("used position and wrap: buffer 0 only").isEqualTo("8001");
            d.memfd.truncate(memSize);
            frames.add(frame(2));
            d.fe.setMemTable(List.of(new Frontend.Region(d.base, d.memSize, d.base, 0, d.memfd)));
            d.fe.setVringBase(0, base);
            d.fe.setVringEnable(0, true);
            d.fe.setVringKick(0, rx.kick);
            rx.kick();
            awaitUsed(rx, 0, 1);
            assertThat(d.mem.get(LE32, good + VirtioNet.HDR_SIZE)).as("the frame in buffer 0").isEqualTo(0);
            awaitUsed(rx, 1, 1);
            assertThat(d.mem.get(LE32, cut + VirtioNet.HDR_SIZE)).as("the frame in buffer 1").isEqualTo(2);
            assertThat(Short.toUnsignedInt(d.mem.get(EvilDriver.U16, cut + VirtioNet.HDR_NUM_BUFFERS)))
                    .as("its num_buffers").isEqualTo(1);
        }
    }

    /** A frame of 60 bytes after its virtio-net header, carrying sequence number {@code seq}. */
    static byte[] frame(int seq) {
        byte[] f = new byte[VirtioNet.HDR_SIZE + 60];
        java.lang.foreign.MemorySegment.ofArray(f).set(LE32, VirtioNet.HDR_SIZE, seq);
        return f;
    }

    /** A frame whose header and sequence number are in one descriptor and the rest in the next. */
    /**
     * A restart at the base this session reported itself takes the chains in flight at the stop again, as the ring is
     * built to: nothing the frontend did, so no warning (before, each such restart logged 'base ... differs from
     * where the ring stands', the line meant for a frontend's base after a backend went away).
     */
    static void assertNoWarningForOwnBase(io.mqvirtio.vhostuser.LogCapture log) {
        assertThat(log.lines()).as("warnings about the base this session reported")
                .noneMatch(l -> l.contains("differs from where the ring stands"));
    }

    static void sendInTwo(EvilDriver d, EvilDriver.Ring tx, long buf, int seq) {
        long at = buf + 512L * (seq % 4);
        d.mem.asSlice(at, 200).fill((byte) 0);
        d.mem.set(LE32, at + VirtioNet.HDR_SIZE, seq);
        tx.packedAt(0, d.gpa(at), VirtioNet.HDR_SIZE + 4, seq, PackedRing.F_NEXT);
        tx.packedAt(1, d.gpa(at + 100), 60, seq, 0);
        tx.publishPacked(PackedRing.F_NEXT, 2);
        tx.kick();
    }

    /** Waits for the used descriptor of the chain {@code id} at the driver's used cursor, and moves past it. */
    static void awaitUsed(EvilDriver.Ring tx, int id) {
        awaitUsed(tx, id, 2);
    }

    /** As {@link #awaitUsed(EvilDriver.Ring, int)}, for a chain of {@code slots} descriptors. */
    static void awaitUsed(EvilDriver.Ring tx, int id, int slots) {
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(3);
        int[] u;
        while ((u = tx.packedUsedAtCursor()) == null) {
            assertThat(System.nanoTime()).as("chain %d used at the driver's cursor within 3 s", id).isLessThan(deadline);
            LockSupport.parkNanos(200_000);
        }
        assertThat(u[0]).as("the used id").isEqualTo(id);
        tx.skipPackedUsed(slots);
    }
}
