package io.mqvirtio.net;

import static io.mqvirtio.virtio.PackedRing.F_INDIRECT;
import static io.mqvirtio.virtio.PackedRing.F_NEXT;
import static io.mqvirtio.virtio.PackedRing.F_USED;
import static io.mqvirtio.virtio.PackedRing.F_WRITE;
import static org.assertj.core.api.Assertions.assertThat;

import io.mqvirtio.backend.LoopbackBackend;
import io.mqvirtio.vhostuser.VhostUserServer;
import io.mqvirtio.virtio.VirtioFeatures;
import java.lang.foreign.ValueLayout;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.function.Consumer;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * The packed versions of the malicious guest's ring attacks, against a running backend: crafted packed rings on one
 * queue pair of one device, while another pair of the same device and another device carry traffic. The broken
 * ring stops (counted, the error eventfd signalled); nothing else notices. (An id in flight twice needs a chain
 * the device still holds: the TX path completes each chain before it pops the next, so that attack is tested on the
 * ring itself, in PackedHostileRingTest.)
 */
class PackedHostileDriverTest {
    static final int SIZE = 64;
    static final long FEATURES = VirtioFeatures.bit(VirtioFeatures.F_VERSION_1) | VirtioFeatures.bit(VirtioFeatures.F_INDIRECT_DESC)
            | VirtioFeatures.bit(VirtioNet.F_MQ) | VirtioFeatures.bit(VirtioNet.F_MRG_RXBUF)
            | VirtioFeatures.bit(VirtioFeatures.F_RING_PACKED);

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

    record Evil(String name, Consumer<EvilDriver> act) {
        @Override
        public String toString() {
            return name;
        }
    }

    static List<Evil> txAttacks() {
        List<Evil> l = new ArrayList<>();
        l.add(new Evil("chain without an end", d -> {
            long off = d.alloc(64);
            for (int i = SIZE - 1; i >= 0; i--) {
                d.tx(0).packed(i, d.gpa(off), 16, i, F_NEXT);
            }
        }));
        l.add(new Evil("buffer id out of range", d -> d.tx(0).packed(0, d.gpa(d.alloc(64)), 64, SIZE + 5, 0)));
        l.add(new Evil("address outside guest memory", d -> d.tx(0).packed(0, 0x10, 64, 0, 0)));
        l.add(new Evil("indirect descriptor with NEXT", d -> d.tx(0).packed(0, d.gpa(d.alloc(64)), 16, 0, F_INDIRECT | F_NEXT)));
        l.add(new Evil("indirect descriptor inside a chain", d -> {
            long off = d.alloc(64);
            d.tx(0).packed(1, d.gpa(off), 16, 0, F_INDIRECT);
            d.tx(0).packed(0, d.gpa(off), 16, 0, F_NEXT);
        }));
        l.add(new Evil("indirect table of length 20", d -> d.tx(0).packed(0, d.gpa(d.alloc(64)), 20, 0, F_INDIRECT)));
        l.add(new Evil("readable after writable", d -> {
            long off = d.alloc(128);
            d.tx(0).packed(1, d.gpa(off + 64), 64, 0, 0);
            d.tx(0).packed(0, d.gpa(off), 64, 0, F_NEXT | F_WRITE);
        }));
        return l;
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("txAttacks")
    @Timeout(60)
    void brokenPackedTxRingStopsOnlyItself(Evil attack) throws Exception {
        try (EvilDriver d = new EvilDriver(victimServer.path(), 2, SIZE, FEATURES, 1 << 20)) {
            assertThat(io.mqvirtio.virtio.Rings.packed(d.negotiated)).isTrue();
            attack.act().accept(d);
            d.tx(0).kick();
            HostileDriverTest.await(() -> victim.counters().get(1).errors() > 0, "the TX ring of pair 0 to break");
            HostileDriverTest.await(() -> d.tx(0).err.drain() > 0, "the error eventfd");
            // the same device's other pair still forwards, as does a device on another socket
            long rxBuf = d.alloc(2048);
            d.rx(1).packed(0, d.gpa(rxBuf), 2048, 3, F_WRITE);
            d.rx(1).kick();
            long txBuf = d.alloc(12 + 100);
            d.mem.asSlice(txBuf, 12).fill((byte) 0);
            java.lang.foreign.MemorySegment.copy(java.lang.foreign.MemorySegment.ofArray(HostileDriverTest.frame(100, 7)), 0,
                    d.mem, txBuf + 12, 100);
            d.tx(1).packed(0, d.gpa(txBuf), 112, 9, 0);
            d.tx(1).kick();
            HostileDriverTest.await(() -> d.rx(1).packedUsed(0), "pair 1 to echo a frame");
            assertThat(d.mem.get(EvilDriver.U16, d.rx(1).descOff + 12)).as("the used id").isEqualTo((short) 3);
            assertThat(d.mem.get(EvilDriver.U32, d.rx(1).descOff + 8)).as("the used length").isEqualTo(112);
            assertThat(d.mem.asSlice(rxBuf + 12, 100).toArray(ValueLayout.JAVA_BYTE)).isEqualTo(HostileDriverTest.frame(100, 7));
            HostileDriverTest.assertEchoes(bystanderServer.path(), 1, 0);
        }
        HostileDriverTest.assertEchoes(victimServer.path(), 2, 0); // and the next session gets everything back
    }

    /**
     * The device pops a burst of RX buffers and gives back those no frame came for (the loopback port is empty), so
     * it has read them as available; the driver then takes the first one back (its flags rewritten as not available)
     * and makes one more available beyond them. A wait for more buffers looked only beyond those given back, found
     * that one, and said "more" to a worker whose next pop stops at the taken-back descriptor: the worker went round
     * at 100 % of a core for as long as the driver left it so. Now a descriptor read as available and given back
     * that is no longer available breaks the ring (the driver took back a buffer it had given the device).
     */
    @Test
    @Timeout(60)
    void aBufferTakenBackAfterTheDeviceGaveItBackBreaksTheRxRingAndNothingSpins() throws Exception {
        try (EvilDriver d = new EvilDriver(victimServer.path(), 2, SIZE, FEATURES, 1 << 20)) {
            long off = d.alloc(9 * 2048);
            for (int i = 0; i < 8; i++) {
                d.rx(0).packed(i, d.gpa(off + 2048L * i), 2048, i, F_WRITE);
            }
            d.rx(0).kick();
            // the RX burst found buffers to spare and asked for no kicks: it popped them and gave them back
            HostileDriverTest.await(() -> d.mem.get(EvilDriver.U16, d.rx(0).usedOff + 2) == 1,
                    "the device to write DISABLE after an RX burst");
            d.rx(0).packed(0, d.gpa(off), 2048, 0, F_WRITE | F_USED); // taken back: not available for wrap 1
            d.rx(0).packed(8, d.gpa(off + 2048L * 8), 2048, 8, F_WRITE);
            d.rx(0).kick();
            assertThat(WorkerStallTest.workerCpuMillis(victim, 1000)).as("worker CPU over 1 s, ms").isLessThan(150);
            HostileDriverTest.await(() -> victim.counters().get(0).errors() > 0, "the RX ring of pair 0 to break");
            assertThat(victim.deadReason()).isNull();
            HostileDriverTest.assertEchoes(bystanderServer.path(), 1, 0);
        }
        HostileDriverTest.assertEchoes(victimServer.path(), 2, 0); // and the next session gets everything back
    }

    /** Flags that look used (set by the driver), or available for the other wrap counter: simply not there yet. */
    @Test
    @Timeout(60)
    void descriptorsThatAreNotAvailableAreLeftAlone() throws Exception {
        try (EvilDriver d = new EvilDriver(victimServer.path(), 2, SIZE, FEATURES, 1 << 20)) {
            long off = d.alloc(128);
            d.tx(0).packed(0, d.gpa(off), 112, 1, F_USED | io.mqvirtio.virtio.PackedRing.F_AVAIL);
            d.tx(0).packed(1, d.gpa(off), 112, 2, F_USED);
            d.tx(0).kick();
            Thread.sleep(300);
            assertThat(victim.counters().get(1).errors()).isZero();
            assertThat(victim.counters().get(1).packets()).isZero();
            assertThat(d.tx(0).err.drain()).isZero();
        }
    }
}
