package io.mqvirtio.net;

import static io.mqvirtio.virtio.SplitRing.DESC_F_WRITE;
import static org.assertj.core.api.Assertions.assertThat;

import io.mqvirtio.backend.LoopbackBackend;
import io.mqvirtio.vhostuser.VhostUserServer;
import io.mqvirtio.virtio.VirtioFeatures;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.file.Path;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * Nothing of one session reaches the next frontend on the same socket: frames the last guest sent that are still
 * queued in the backend (the loopback's FIFO, a parked RX frame) are dropped when the device resets. A frame parked
 * when its ring stops lands first if the driver posted the buffers it waited for (their kick not yet read): at a
 * migration's switch-over that frame moves with the guest instead of being lost.
 */
@Timeout(60)
class SessionResetTest {
    static final long FEATURES = VirtioFeatures.bit(VirtioFeatures.F_VERSION_1) | VirtioFeatures.bit(VirtioNet.F_MQ)
            | VirtioFeatures.bit(VirtioNet.F_MRG_RXBUF);

    @TempDir
    Path dir;
    NetDevice dev;
    VhostUserServer server;

    @BeforeEach
    void start() {
        dev = new NetDevice(NetDevice.Config.of("dev", 1), new LoopbackBackend(1, 1500));
        server = VhostUserServer.listen(dir.resolve("dev.sock"), dev);
    }

    @AfterEach
    void stop() {
        server.close();
        dev.close();
    }

    @Test
    void framesQueuedForOneFrontendNeverReachTheNext() throws Exception {
        try (EvilDriver first = new EvilDriver(server.path(), 1, 64, FEATURES, 1 << 20)) {
            for (int i = 0; i < 3; i++) {
                HostileDriverTest.sendValid(first, 0, HostileDriverTest.frame(100, i), i); // no RX buffers: queued
            }
            HostileDriverTest.await(() -> first.tx(0).usedIdx() == 3, "three frames sent");
            // and the first of them parked: one buffer too small for it (MRG_RXBUF: it waits for more buffers)
            long small = first.alloc(64);
            first.rx(0).desc(0, first.gpa(small), 64, DESC_F_WRITE, 0);
            first.rx(0).offer(0);
            first.rx(0).kick();
            Thread.sleep(200);
            assertThat(first.rx(0).usedIdx()).isZero();
        }
        HostileDriverTest.await(() -> !server.hasSession(), "the first session to end");
        try (EvilDriver next = new EvilDriver(server.path(), 1, 64, FEATURES, 1 << 20)) {
            EvilDriver.Ring rx = next.rx(0);
            long[] bufs = new long[8];
            for (int i = 0; i < bufs.length; i++) {
                bufs[i] = next.alloc(2048);
                rx.desc(i, next.gpa(bufs[i]), 2048, DESC_F_WRITE, 0);
                rx.offer(i);
            }
            rx.kick();
            Thread.sleep(500);
            assertThat(rx.usedIdx()).as("frames of the last session delivered to this one").isZero();
            byte[] mine = HostileDriverTest.frame(200, 9);
            HostileDriverTest.sendValid(next, 0, mine, 0);
            HostileDriverTest.await(() -> rx.usedIdx() == 1, "this session's own frame");
            int[] u = rx.nextUsed();
            assertThat(u[1]).isEqualTo(12 + 200);
            assertThat(next.mem.asSlice(bufs[u[0]] + 12, 200).toArray(ValueLayout.JAVA_BYTE)).isEqualTo(mine);
        }
    }

    @Test
    void aParkedFrameLandsWhenTheRingStopsIfTheBuffersItWaitedForArePosted() throws Exception {
        try (EvilDriver d = new EvilDriver(server.path(), 1, 64, FEATURES, 1 << 20)) {
            byte[] f = HostileDriverTest.frame(100, 5);
            HostileDriverTest.sendValid(d, 0, f, 0);
            HostileDriverTest.await(() -> d.tx(0).usedIdx() == 1, "the frame sent");
            EvilDriver.Ring rx = d.rx(0);
            long small = d.alloc(64);
            rx.desc(0, d.gpa(small), 64, DESC_F_WRITE, 0);
            rx.offer(0);
            rx.kick();
            Thread.sleep(200);
            assertThat(rx.usedIdx()).as("parked: one 64-byte buffer is too small").isZero();
            long big = d.alloc(2048);
            rx.desc(1, d.gpa(big), 2048, DESC_F_WRITE, 0);
            rx.offer(1); // no kick: the worker does not know yet
            Thread.sleep(200);
            assertThat(rx.usedIdx()).as("nothing without a kick").isZero();

            assertThat(d.fe.getVringBase(0)).as("where the RX ring stopped: both buffers taken").isEqualTo(2);
            assertThat(rx.usedIdx()).as("the frame landed in both buffers, published before the reply").isEqualTo(2);
            int[] first = rx.nextUsed();
            int[] second = rx.nextUsed();
            assertThat(first).containsExactly(0, 64);
            assertThat(second).containsExactly(1, 12 + 100 - 64);
            assertThat(d.mem.get(EvilDriver.U16, small + VirtioNet.HDR_NUM_BUFFERS)).as("num_buffers").isEqualTo((short) 2);
            byte[] got = new byte[100];
            MemorySegment.copy(d.mem, ValueLayout.JAVA_BYTE, small + 12, got, 0, 52);
            MemorySegment.copy(d.mem, ValueLayout.JAVA_BYTE, big, got, 52, 48);
            assertThat(got).isEqualTo(f);
            QueueCounters.Snapshot c = dev.counters().get(0);
            assertThat(c.packets()).isEqualTo(1);
            assertThat(c.drops()).isZero();
        }
    }
}
