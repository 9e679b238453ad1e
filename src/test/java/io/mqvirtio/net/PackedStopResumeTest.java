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
