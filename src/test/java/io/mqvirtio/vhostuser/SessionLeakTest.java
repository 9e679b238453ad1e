package io.mqvirtio.vhostuser;

import static io.mqvirtio.vhostuser.BackendHarness.BASIC_PF;
import static io.mqvirtio.vhostuser.BackendHarness.RING;
import static io.mqvirtio.vhostuser.RawPeer.memReg;
import static io.mqvirtio.vhostuser.RawPeer.memTable;
import static io.mqvirtio.vhostuser.RawPeer.state;
import static io.mqvirtio.vhostuser.RawPeer.u64;
import static org.assertj.core.api.Assertions.assertThat;

import io.mqvirtio.backend.LoopbackBackend;
import io.mqvirtio.linux.EventFd;
import io.mqvirtio.net.NetDevice;
import io.mqvirtio.net.VirtioNet;
import io.mqvirtio.virtio.SplitDriverRing;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * No descriptor and no mapping outlives a session: sessions that map memory and run rings on the real net device,
 * then end normally, abruptly, after errors, or because the server closes, leave this process with exactly the
 * descriptors ({@code /proc/self/fd}) and memfd mappings ({@code /proc/self/maps}) it had before. Within a session,
 * a replaced or removed region is unmapped at once.
 */
@Timeout(60)
class SessionLeakTest {
    static final int PAIRS = 2;

    @TempDir
    Path dir;

    private static void assertBackTo(Leaks baseline) throws InterruptedException {
        Leaks after = Leaks.settleTo(baseline, 3000);
        assertThat(after.fds()).as("descriptors, before:%n%s%nafter:%n%s", baseline.describe(), after.describe())
                .isEqualTo(baseline.fds());
        assertThat(after.memfdMaps()).as("memfd mappings, before:%n%s%nafter:%n%s", baseline.describe(), after.describe())
                .isEqualTo(baseline.memfdMaps());
    }

    /** A session on the net device: memory, every ring running, one frame through pair 0; returns with it open. */
    private static void runTraffic(RawPeer fe, GuestRam ram, List<EventFd> fds) throws InterruptedException {
        BackendHarness.negotiate(fe, BASIC_PF);
        fe.ok(Request.SET_MEM_TABLE, ram.memTable(), ram.fd());
        List<SplitDriverRing> q = new ArrayList<>();
        for (int i = 0; i < 2 * PAIRS; i++) {
            EventFd kick = EventFd.create(), call = EventFd.create();
            fds.add(kick);
            fds.add(call);
            BackendHarness.setupRing(fe, ram, i, kick, call);
            fe.ok(Request.SET_VRING_ENABLE, state(i, 1));
            q.add(ram.driver(ram.ring(i, RING), BackendHarness.FEATURES));
        }
        long rxBuf = ram.alloc(2048), txBuf = ram.alloc(VirtioNet.HDR_SIZE + 60);
        q.get(0).add(new long[] {ram.gpa(rxBuf)}, new int[] {2048}, 0, 1);
        q.get(0).publish();
        q.get(1).add(new long[] {ram.gpa(txBuf)}, new int[] {VirtioNet.HDR_SIZE + 60}, 1, 0);
        q.get(1).publish();
        fds.get(2).signal(); // TX kick of pair 0
        long deadline = System.nanoTime() + 5_000_000_000L;
        while (q.get(0).reap() < 0) {
            assertThat(System.nanoTime()).as("frame looped back within 5 s").isLessThan(deadline);
            Thread.sleep(1);
        }
    }

    private static void closeAll(List<EventFd> fds) {
        fds.forEach(EventFd::close);
        fds.clear();
    }

    @Test
    void sessionsThatEndNormallyOrAbruptlyOrWithErrorsLeaveNothing() throws Exception {
        Path sock = dir.resolve("vu.sock");
        try (NetDevice dev = new NetDevice(NetDevice.Config.of("leak", PAIRS), new LoopbackBackend(PAIRS, 1500));
             VhostUserServer server = VhostUserServer.listen(sock, dev)) {
            List<EventFd> fds = new ArrayList<>();
            // Warm up (classes, lazily opened files), then take the baseline.
            try (RawPeer fe = RawPeer.connect(sock); GuestRam ram = new GuestRam()) {
                runTraffic(fe, ram, fds);
            } finally {
                closeAll(fds);
            }
            BackendHarness.awaitNoSession(server);
            Leaks baseline = Leaks.now();

            for (int round = 0; round < 3; round++) {
                // 1. Normal: rings stopped by GET_VRING_BASE, then disconnect.
                try (RawPeer fe = RawPeer.connect(sock); GuestRam ram = new GuestRam()) {
                    runTraffic(fe, ram, fds);
                    for (int i = 0; i < 2 * PAIRS; i++) {
                        fe.send(Request.GET_VRING_BASE, state(i, 0));
                        fe.expectReplyTo(Request.GET_VRING_BASE.id);
                    }
                } finally {
                    closeAll(fds);
                }
                BackendHarness.awaitNoSession(server);

                // 2. Abrupt: the frontend vanishes with every ring running.
                try (RawPeer fe = RawPeer.connect(sock); GuestRam ram = new GuestRam()) {
                    runTraffic(fe, ram, fds);
                } finally {
                    closeAll(fds);
                }
                BackendHarness.awaitNoSession(server);

                // 3. A frame error with rings running and memory mapped (closes the connection).
                try (RawPeer fe = RawPeer.connect(sock); GuestRam ram = new GuestRam()) {
                    runTraffic(fe, ram, fds);
                    fe.send(Request.SET_FEATURES.id, 0, u64(0), fds.get(0).fd());
                    fe.expectClosed();
                } finally {
                    closeAll(fds);
                }
                BackendHarness.awaitNoSession(server);

                // 4. A failed request without ack (closes the connection): a second table that overlaps itself.
                try (RawPeer fe = RawPeer.connect(sock); GuestRam ram = new GuestRam()) {
                    runTraffic(fe, ram, fds);
                    fe.send(Request.SET_MEM_TABLE, memTable(new RawPeer.Region(0, 2 << 20, ram.uva(0), 0),
                            new RawPeer.Region(1 << 20, 2 << 20, ram.uva(2 << 20), 2 << 20)), ram.fd(), ram.fd());
                    fe.expectClosed();
                } finally {
                    closeAll(fds);
                }
                BackendHarness.awaitNoSession(server);

                // 5. Failures with acks, then a hang-up in the middle of a message carrying descriptors.
                try (RawPeer fe = RawPeer.connect(sock); GuestRam ram = new GuestRam()) {
                    runTraffic(fe, ram, fds);
                    assertThat(fe.ack(Request.SET_MEM_TABLE, memTable(new RawPeer.Region(0, 1L << 40, ram.uva(0), 0)),
                            ram.fd())).isNotZero();
                    assertThat(fe.ack(Request.SET_VRING_KICK, u64(9), fds.get(0).fd())).isNotZero();
                    assertThat(fe.ack(Request.ADD_MEM_REG, memReg(new RawPeer.Region(0, 4096, 1L << 46, 4L << 20)),
                            ram.fd())).isNotZero();
                    byte[] f = RawPeer.frame(Request.SET_MEM_TABLE.id, RawPeer.V1, 40, new byte[40]);
                    fe.sendRaw(java.util.Arrays.copyOf(f, 20), ram.fd());
                } finally {
                    closeAll(fds);
                }
                BackendHarness.awaitNoSession(server);
            }
            assertBackTo(baseline);
        }
    }

    @Test
    void closingTheServerDuringASessionLeavesNothing() throws Exception {
        Path sock = dir.resolve("vu.sock");
        try (NetDevice dev = new NetDevice(NetDevice.Config.of("leak-close", PAIRS), new LoopbackBackend(PAIRS, 1500))) {
            List<EventFd> fds = new ArrayList<>();
            Leaks baseline = null;
            for (int round = 0; round < 3; round++) {
                if (round == 1) {
                    baseline = Leaks.now(); // after a warm-up round
                }
                VhostUserServer server = VhostUserServer.listen(sock, dev);
                try (RawPeer fe = RawPeer.connect(sock); GuestRam ram = new GuestRam()) {
                    runTraffic(fe, ram, fds);
                    server.close();
                    assertThat(server.hasSession()).isFalse();
                    fe.expectClosed();
                } finally {
                    server.close();
                    closeAll(fds);
                }
            }
            assertBackTo(baseline);
        }
    }

    @Test
    void replacedAndRemovedRegionsAreUnmappedAtOnce() throws Exception {
        Path sock = dir.resolve("vu.sock");
        RecordingDevice dev = new RecordingDevice(2);
        try (VhostUserServer server = VhostUserServer.listen(sock, dev)) {
            BackendHarness.assertServesFully(server, sock, dev); // warm up
            Leaks baseline = Leaks.now();
            try (RawPeer fe = RawPeer.connect(sock);
                 GuestRam one = new GuestRam("mqv-one", 4 << 20);
                 GuestRam two = new GuestRam("mqv-two", 1 << 20);
                 GuestRam three = new GuestRam("mqv-three", 1 << 20);
                 EventFd kick = EventFd.create(); EventFd call = EventFd.create()) {
                BackendHarness.negotiate(fe, BASIC_PF);
                RawPeer.Region r1 = one.region();
                RawPeer.Region r2 = new RawPeer.Region(1L << 32, two.map.size(), two.uva(0), 0);
                RawPeer.Region r3 = new RawPeer.Region(2L << 32, three.map.size(), three.uva(0), 0);
                fe.ok(Request.SET_MEM_TABLE, memTable(r1), one.fd());
                BackendHarness.setupRing(fe, one, 0, kick, call);
                assertThat(Leaks.mappingsOf("mqv-one")).as("ours and the backend's").isEqualTo(2);

                // A new whole table while the ring runs: the old mapping of one goes, a new one comes.
                fe.ok(Request.SET_MEM_TABLE, memTable(r1, r2), one.fd(), two.fd());
                assertThat(Leaks.mappingsOf("mqv-one")).isEqualTo(2);
                assertThat(Leaks.mappingsOf("mqv-two")).isEqualTo(2);
                assertThat(dev.running()).isEqualTo(1);

                // Slots: add and remove a region.
                fe.ok(Request.ADD_MEM_REG, memReg(r3), three.fd());
                assertThat(Leaks.mappingsOf("mqv-three")).isEqualTo(2);
                fe.ok(Request.REM_MEM_REG, memReg(r3));
                assertThat(Leaks.mappingsOf("mqv-three")).isEqualTo(1);
                fe.ok(Request.REM_MEM_REG, memReg(r2), two.fd()); // QEMU sends the fd along; it is closed
                assertThat(Leaks.mappingsOf("mqv-two")).isEqualTo(1);
                assertThat(dev.running()).isEqualTo(1);

                // Removing the ring's own region parks the ring; adding it back resumes it where it stopped.
                fe.ok(Request.REM_MEM_REG, memReg(r1));
                assertThat(Leaks.mappingsOf("mqv-one")).isEqualTo(1);
                assertThat(dev.running()).isZero();
                fe.ok(Request.ADD_MEM_REG, memReg(r1), one.fd());
                assertThat(dev.running()).isEqualTo(1);
                assertThat(Leaks.mappingsOf("mqv-one")).isEqualTo(2);

                // A table that fails leaves the current one in place, mapped once.
                assertThat(fe.ack(Request.SET_MEM_TABLE, memTable(r1, new RawPeer.Region(0x1000, 4096, 1L << 45, 2 << 20)),
                        one.fd(), two.fd())).isNotZero();
                assertThat(Leaks.mappingsOf("mqv-one")).isEqualTo(2);
                assertThat(Leaks.mappingsOf("mqv-two")).isEqualTo(1);
                assertThat(dev.running()).isEqualTo(1);
            }
            BackendHarness.awaitNoSession(server);
            assertBackTo(baseline);
        }
    }
}
