package io.mqvirtio.vhostuser;

import static io.mqvirtio.vhostuser.BackendHarness.reap;
import static io.mqvirtio.vhostuser.RawPeer.state;
import static io.mqvirtio.vhostuser.RawPeer.u64;
import static org.assertj.core.api.Assertions.assertThat;

import io.mqvirtio.backend.LoopbackBackend;
import io.mqvirtio.linux.EventFd;
import io.mqvirtio.linux.MemFd;
import io.mqvirtio.linux.Mmap;
import io.mqvirtio.memory.DirtyLog;
import io.mqvirtio.net.NetDevice;
import io.mqvirtio.net.VirtioNet;
import io.mqvirtio.virtio.SplitDriverRing;
import io.mqvirtio.virtio.SplitRing;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * Dirty logging as QEMU drives it when a migration starts (vhost-user.rst, "Migration"), from a raw frontend against
 * the real net device with the loopback backend: SET_LOG_BASE with a memfd log (answered), LOG_ALL switched on with
 * SET_FEATURES and used-ring logging with SET_VRING_ADDR while both rings run; then every page the backend wrote
 * (the RX buffers a frame filled, both used rings) has its bit, and no page it did not write (RX buffers it did not
 * use, the TX frames it only read); LOG_ALL switched off, traffic goes on and nothing more is marked.
 */
@Timeout(30)
class DirtyLoggingTest {
    static final int RING = BackendHarness.RING;
    static final long PAGE = DirtyLog.PAGE;
    static final long FEATURES = BackendHarness.FEATURES;
    static final long LOG_ALL = 1L << Protocol.F_LOG_ALL;
    static final long PF = BackendHarness.BASIC_PF | (1L << Protocol.PF_LOG_SHMFD);

    @TempDir
    Path dir;

    @Test
    void everyPageTheBackendWritesIsMarkedWhileLogging() throws Exception {
        Path sock = dir.resolve("vu.sock");
        // the log covers guest-physical 0 up to the end of the test's memory
        long logBytes = (GuestRam.GPA_BASE + GuestRam.SIZE) / PAGE / 8;
        try (NetDevice dev = new NetDevice(NetDevice.Config.of("log", 1), new LoopbackBackend(1, 1500));
             VhostUserServer server = VhostUserServer.listen(sock, dev);
             RawPeer fe = RawPeer.connect(sock);
             GuestRam ram = new GuestRam();
             MemFd logFd = MemFd.create("dirty-log", logBytes);
             Mmap log = Mmap.shared(logFd, 0, logBytes);
             MemFd logFd2 = MemFd.create("dirty-log-2", logBytes);
             Mmap log2 = Mmap.shared(logFd2, 0, logBytes);
             EventFd k0 = EventFd.create(); EventFd c0 = EventFd.create();
             EventFd k1 = EventFd.create(); EventFd c1 = EventFd.create()) {
            assertThat(fe.get(Request.GET_FEATURES) & LOG_ALL).as("LOG_ALL offered").isNotZero();
            BackendHarness.negotiate(fe, PF);
            fe.ok(Request.SET_MEM_TABLE, ram.memTable(), ram.fd());
            GuestRam.RingAt rxAt = ram.ring(0, RING), txAt = ram.ring(1, RING);
            BackendHarness.setupRing(fe, ram, 0, k0, c0);
            BackendHarness.setupRing(fe, ram, 1, k1, c1);
            fe.ok(Request.SET_VRING_ENABLE, state(0, 1));
            fe.ok(Request.SET_VRING_ENABLE, state(1, 1));
            SplitDriverRing rx = ram.driver(rxAt, FEATURES), tx = ram.driver(txAt, FEATURES);

            // QEMU's order: the log, then LOG_ALL, then each running ring's used-ring logging
            fe.send(Request.SET_LOG_BASE, RawPeer.logBase(logBytes, 0), logFd.fd());
            RawPeer.Reply reply = fe.expectReplyTo(Request.SET_LOG_BASE.id);
            assertThat(reply.payload()).as("SET_LOG_BASE's reply").isEmpty();
            fe.ok(Request.SET_FEATURES, u64(FEATURES | LOG_ALL));
            for (GuestRam.RingAt r : new GuestRam.RingAt[] {rxAt, txAt}) {
                fe.ok(Request.SET_VRING_ADDR, RawPeer.vringAddr(r.index(), Protocol.VRING_F_LOG, ram.uva(r.descOff()),
                        ram.uva(r.usedOff()), ram.uva(r.availOff()), ram.gpa(r.usedOff())));
            }

            // sixteen RX buffers, a page each; five frames to send, each in a page of its own
            int buffers = 16;
            long rxBase = pageAligned(ram.alloc((buffers + 1) * PAGE));
            for (int b = 0; b < buffers; b++) {
                assertThat(rx.add(new long[] {ram.gpa(rxBase + b * PAGE)}, new int[] {2048}, 0, 1)).isNotNegative();
            }
            rx.publish();
            k0.signal();
            long txBase = pageAligned(ram.alloc(6 * PAGE));
            int frames = 5;
            int sent = frames;
            send(ram, tx, k1, txBase, frames, (byte) 0x40);
            for (int f = 0; f < frames; f++) {
                reap(rx);
            }
            for (int f = 0; f < frames; f++) {
                reap(tx);
            }
            MemorySegment bits = log.segment();
            for (int b = 0; b < buffers; b++) {
                assertThat(dirty(bits, ram.gpa(rxBase + b * PAGE))).as("RX buffer %d (%s)", b, b < frames ? "used" : "unused")
                        .isEqualTo(b < frames);
            }
            for (int f = 0; f < frames; f++) {
                assertThat(dirty(bits, ram.gpa(txBase + f * PAGE))).as("TX frame %d, only read", f).isFalse();
            }
            for (GuestRam.RingAt r : new GuestRam.RingAt[] {rxAt, txAt}) {
                long e = ram.gpa(r.usedOff());
                assertThat(dirty(bits, e)).as("ring %d's used index", r.index()).isTrue();
                assertThat(dirty(bits, e + SplitRing.usedBytes(RING) - 1)).as("ring %d's used ring end", r.index()).isTrue();
            }

            // a new log under traffic (QEMU resizes its log this way): later writes go there, the old one is unmapped
            {
                assertThat(mappedCount("memfd:dirty-log ")).as("the first log, mapped by the test and the backend").isEqualTo(2);
                fe.send(Request.SET_LOG_BASE, RawPeer.logBase(logBytes, 0), logFd2.fd());
                fe.expectReplyTo(Request.SET_LOG_BASE.id);
                assertThat(mappedCount("memfd:dirty-log ")).as("the first log, unmapped by the backend").isEqualTo(1);
                bits.fill((byte) 0);
                send(ram, tx, k1, txBase, frames, (byte) 0x60);
                for (int f = 0; f < frames; f++) {
                    reap(rx);
                    reap(tx);
                }
                for (int b = frames; b < 2 * frames; b++) {
                    assertThat(dirty(log2.segment(), ram.gpa(rxBase + b * PAGE))).as("RX buffer %d in the new log", b).isTrue();
                    assertThat(dirty(bits, ram.gpa(rxBase + b * PAGE))).as("RX buffer %d in the old log", b).isFalse();
                }
            }
            sent += frames;

            // what the metrics say: the device logs, and counted the pages it marked
            assertThat(dev.isLogging()).isTrue();
            long deadline = System.nanoTime() + 2_000_000_000L;
            while (dev.dirtyPages() < frames && System.nanoTime() < deadline) {
                Thread.sleep(1);
            }
            assertThat(dev.dirtyPages()).as("page marks counted").isGreaterThanOrEqualTo(frames);

            // logging off: the rings go on, and nothing more is marked
            fe.ok(Request.SET_FEATURES, u64(FEATURES));
            assertThat(dev.isLogging()).isFalse();
            bits = log2.segment(); // where the backend would write now
            bits.fill((byte) 0);
            send(ram, tx, k1, txBase, frames, (byte) 0x50);
            for (int f = 0; f < frames; f++) {
                reap(rx);
                reap(tx);
            }
            for (long i = 0; i < logBytes; i++) {
                assertThat(bits.get(ValueLayout.JAVA_BYTE, i)).as("log byte %d after logging stopped", i).isZero();
            }
            sent += frames;
            fe.send(Request.GET_VRING_BASE, state(1, 0));
            assertThat(fe.expectReplyTo(Request.GET_VRING_BASE.id).u32(4)).as("TX base").isEqualTo(sent);
        }
    }

    /** Mappings of this process whose name contains {@code name} (the backend runs in it). */
    static long mappedCount(String name) throws java.io.IOException {
        try (var lines = java.nio.file.Files.lines(Path.of("/proc/self/maps"))) {
            return lines.filter(l -> l.contains(name)).count();
        }
    }

    static long pageAligned(long off) {
        return (off + PAGE - 1) & -PAGE;
    }

    static boolean dirty(MemorySegment bits, long gpa) {
        long page = gpa / PAGE;
        return (bits.get(ValueLayout.JAVA_BYTE, page / 8) & (1 << (page % 8))) != 0;
    }

    static void send(GuestRam ram, SplitDriverRing tx, EventFd kick, long base, int frames, byte fill) {
        for (int f = 0; f < frames; f++) {
            long off = base + f * PAGE;
            MemorySegment fr = ram.seg().asSlice(off, VirtioNet.HDR_SIZE + 100);
            fr.fill((byte) 0);
            fr.asSlice(VirtioNet.HDR_SIZE).fill(fill);
            assertThat(tx.add(new long[] {ram.gpa(off)}, new int[] {VirtioNet.HDR_SIZE + 100}, 1, 0)).isNotNegative();
        }
        tx.publish();
        kick.signal();
    }
}
