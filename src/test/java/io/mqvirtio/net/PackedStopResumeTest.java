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

    /** A frame whose header and sequence number are in one descriptor and the rest in the next. */
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
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(3);
        int[] u;
        while ((u = tx.packedUsedAtCursor()) == null) {
            assertThat(System.nanoTime()).as("chain %d used at the driver's cursor within 3 s", id).isLessThan(deadline);
            LockSupport.parkNanos(200_000);
        }
        assertThat(u[0]).as("the used id").isEqualTo(id);
        tx.skipPackedUsed(2);
    }
}
