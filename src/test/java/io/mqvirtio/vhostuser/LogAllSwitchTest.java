package io.mqvirtio.vhostuser;

import static io.mqvirtio.vhostuser.BackendHarness.reap;
import static io.mqvirtio.vhostuser.DirtyLoggingTest.dirty;
import static io.mqvirtio.vhostuser.DirtyLoggingTest.pageAligned;
import static io.mqvirtio.vhostuser.RawPeer.state;
import static io.mqvirtio.vhostuser.RawPeer.u64;
import static org.assertj.core.api.Assertions.assertThat;

import io.mqvirtio.backend.LoopbackBackend;
import io.mqvirtio.linux.EventFd;
import io.mqvirtio.linux.MemFd;
import io.mqvirtio.linux.Mmap;
import io.mqvirtio.memory.DirtyLog;
import io.mqvirtio.net.NetDevice;
import io.mqvirtio.virtio.SplitDriverRing;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * LOG_ALL switched on while rings run, by a frontend that does not follow QEMU's steps: every running ring logs from
 * the moment SET_FEATURES is answered with success, or none does and LOG_ALL stays off. A ring that does not log
 * while the session believes it does leaves pages written and never marked, stale at the destination.
 */
@Timeout(30)
class LogAllSwitchTest {
    static final int RING = BackendHarness.RING;
    static final long PAGE = DirtyLog.PAGE;
    static final long FEATURES = BackendHarness.FEATURES;
    static final long LOG_ALL = 1L << Protocol.F_LOG_ALL;
    static final long PF = BackendHarness.BASIC_PF | (1L << Protocol.PF_LOG_SHMFD);
    static final long LOG_BYTES = (GuestRam.GPA_BASE + GuestRam.SIZE) / PAGE / 8;

    @TempDir
    Path dir;

    /** A device with the loopback backend, a frontend, its memory and log, and both rings of pair 0. */
    final class Rig implements AutoCloseable {
        final NetDevice dev = new NetDevice(NetDevice.Config.of("switch", 1), new LoopbackBackend(1, 1500));
        final VhostUserServer server = VhostUserServer.listen(dir.resolve("vu.sock"), dev);
        final RawPeer fe = RawPeer.connect(server.path());
        final GuestRam ram = new GuestRam();
        final MemFd logFd = MemFd.create("switch-log", LOG_BYTES);
        final Mmap log = Mmap.shared(logFd, 0, LOG_BYTES);
        final EventFd k0 = EventFd.create(), c0 = EventFd.create(), k1 = EventFd.create(), c1 = EventFd.create();
        final GuestRam.RingAt rxAt = ram.ring(0, RING), txAt = ram.ring(1, RING);
        SplitDriverRing rx, tx;

        /** Memory and both rings started and enabled; {@code features} are the driver's view of the layout. */
        void startRings(long features) {
            fe.ok(Request.SET_MEM_TABLE, ram.memTable(), ram.fd());
            BackendHarness.setupRing(fe, ram, 0, k0, c0);
            BackendHarness.setupRing(fe, ram, 1, k1, c1);
            fe.ok(Request.SET_VRING_ENABLE, state(0, 1));
            fe.ok(Request.SET_VRING_ENABLE, state(1, 1));
            rx = ram.driver(rxAt, features);
            tx = ram.driver(txAt, features);
            fe.send(Request.SET_LOG_BASE, RawPeer.logBase(LOG_BYTES, 0), logFd.fd());
            fe.expectReplyTo(Request.SET_LOG_BASE.id);
        }

        /** SET_VRING_ADDR with VHOST_VRING_F_LOG for running ring {@code r}, its used ring logged at {@code logGpa}. */
        long logUsedAt(GuestRam.RingAt r, long logGpa) {
            return fe.ack(Request.SET_VRING_ADDR, RawPeer.vringAddr(r.index(), Protocol.VRING_F_LOG, ram.uva(r.descOff()),
                    ram.uva(r.usedOff()), ram.uva(r.availOff()), logGpa));
        }

        /**
         * One frame through the loopback, into an RX buffer of a page of its own: asserts that the buffer's page is
         * marked, and with {@code usedRings} (their VHOST_VRING_F_LOG given) both used rings' pages.
         */
        void frameIsLogged(boolean usedRings) throws InterruptedException {
            log.segment().fill((byte) 0);
            long buf = pageAligned(ram.alloc(2 * PAGE));
            assertThat(rx.add(new long[] {ram.gpa(buf)}, new int[] {2048}, 0, 1)).isNotNegative();
            rx.publish();
            k0.signal();
            long frame = pageAligned(ram.alloc(2 * PAGE));
            DirtyLoggingTest.send(ram, tx, k1, frame, 1, (byte) 0x33);
            reap(rx);
            reap(tx);
            assertThat(dirty(log.segment(), ram.gpa(buf))).as("the RX buffer's page").isTrue();
            if (!usedRings) {
                return;
            }
            assertThat(dirty(log.segment(), ram.gpa(rxAt.usedOff()))).as("the RX used ring's page").isTrue();
            assertThat(dirty(log.segment(), ram.gpa(txAt.usedOff()))).as("the TX used ring's page").isTrue();
        }

        @Override
        public void close() {
            for (AutoCloseable c : new AutoCloseable[] {fe, server, dev, log, logFd, ram, k0, c0, k1, c1}) {
                try {
                    c.close();
                } catch (Exception ignored) {
                    // test resources
                }
            }
        }
    }

    /**
     * Ring 0 asks for its used ring to be logged beyond the log while LOG_ALL is off (taken then: nothing is logged),
     * so LOG_ALL is refused. Before, the refusal left LOG_ALL on in the session with ring 0 logging and ring 1 never
     * handed the log: once ring 0's address was mended, LOG_ALL again changed nothing, and TX used-ring writes went
     * unmarked for the whole migration.
     */
    @Test
    void aRefusedLogAllLeavesEveryRingAsItWas() throws Exception {
        try (Rig t = new Rig()) {
            BackendHarness.negotiate(t.fe, PF);
            t.startRings(FEATURES);
            assertThat(t.logUsedAt(t.rxAt, -PAGE)).as("a log address beyond the log, not logging yet").isZero();
            assertThat(t.logUsedAt(t.txAt, t.ram.gpa(t.txAt.usedOff()))).isZero();
            assertThat(t.fe.ack(Request.SET_FEATURES, u64(FEATURES | LOG_ALL))).as("LOG_ALL refused").isNotZero();
            assertThat(t.dev.isLogging()).as("no ring logs after the refusal").isFalse();

            assertThat(t.logUsedAt(t.rxAt, t.ram.gpa(t.rxAt.usedOff()))).as("ring 0's log address mended").isZero();
            assertThat(t.fe.ack(Request.SET_FEATURES, u64(FEATURES | LOG_ALL))).as("LOG_ALL again").isZero();
            t.frameIsLogged(true);
        }
    }

    // (Rings no longer start before the first SET_FEATURES, the one way LOG_ALL could come with it while they ran:
    // HostileFrontendTest's 'kick before SET_FEATURES'.)
}
