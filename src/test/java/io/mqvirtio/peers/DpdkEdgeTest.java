package io.mqvirtio.peers;

import static org.assertj.core.api.Assertions.assertThat;

import io.mqvirtio.bench.Testpmd;
import io.mqvirtio.net.NetDevice;
import io.mqvirtio.net.QueueCounters;
import io.mqvirtio.vhostuser.VhostUserServer;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;
import java.util.concurrent.TimeUnit;
import java.util.stream.Stream;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * DPDK's virtio-user (testpmd forwarding {@code io} or {@code macswap} on its one port looped to itself) against our
 * backend at the edges: rings of 8 to the largest DPDK takes (32768), split and packed, with and without IN_ORDER and
 * mergeable buffers, several pairs, frames up to the MTU in buffers smaller than them. Each pair's frames go out
 * through testpmd's RX queue and come back on the same pair's TX: every frame checked byte for byte, in order, once.
 * With at most as many frames in flight per pair as its rings hold, none may be lost; a frame that does not fit
 * the buffers without mergeable buffers must be dropped and counted by our device, never handed on cut. testpmd's
 * {@code port stop} / {@code port start} under a flood (GET_VRING_BASE on every ring, then a restart): traffic resumes.
 * DPDK's limits: its virtio PMD refuses rings under 8 (TX: tx_free_thresh must stay under the size less 3) and
 * buffers smaller than a frame without mergeable buffers (no RX scatter then), hence our MTU of 9000 for that.
 */
@Tag("peer")
class DpdkEdgeTest {
    @TempDir
    Path dir;

    /**
     * One case: testpmd's devargs (beyond path and queues), pairs, forwarding, frame lengths, its mbuf size (0: its
     * default), how many frames per pair may be in flight (0: as many as 64 queued, losses allowed), seconds.
     */
    record Case(String devargs, int pairs, String fwd, int minLen, int maxLen, String extra, int window, double seconds) {
        @Override
        public String toString() {
            return "\"" + devargs + "\" pairs " + pairs + " " + fwd + " len " + minLen + "-" + maxLen
                    + (extra.isEmpty() ? "" : " " + extra) + " window " + window;
        }
    }

    static Stream<Case> cases() {
        String only = System.getProperty("edge.cases");
        List<Case> all = new ArrayList<>();
        if (only != null) {
            for (String c : only.split(";")) {
                String[] f = c.split("\\|");
                all.add(new Case(f[0], Integer.parseInt(f[1]), f[2], Integer.parseInt(f[3]), Integer.parseInt(f[4]),
                        f[5], Integer.parseInt(f[6]), Double.parseDouble(f[7])));
            }
            return all.stream();
        }
        // a tiny split ring; frames up to 3000 bytes from a device whose MTU is 9000 into 2 KiB buffers without
        // mergeable buffers: the larger ones dropped and counted, the others back whole
        all.add(new Case("queue_size=8,packed_vq=0,in_order=0,mrg_rxbuf=0", 1, "io", 60, 3000, "devmtu=9000", 4, 1.5));
        // the same on a packed ring, two pairs, MACs swapped
        all.add(new Case("queue_size=16,packed_vq=1,in_order=0,mrg_rxbuf=0", 2, "macswap", 60, 3000, "devmtu=9000", 4,
                1.5));
        // 512-byte mbufs: frames reach testpmd in several buffers (mergeable) and leave it in several segments, which
        // its packed ring sends as indirect tables whose header descriptor is marked WRITE (DPDK's quirk)
        all.add(new Case("queue_size=8,packed_vq=1,in_order=1,mrg_rxbuf=1", 2, "macswap", 60, 1514,
                "--mbuf-size=512 --enable-scatter", 4, 1.5));
        all.add(new Case("queue_size=16,packed_vq=1,in_order=0,mrg_rxbuf=1", 1, "io", 60, 1514,
                "--mbuf-size=512 --enable-scatter", 4, 1.5));
        // testpmd's own `port stop` / `port start` under a flood, both layouts
        all.add(new Case("queue_size=16,packed_vq=1,in_order=1,mrg_rxbuf=1", 2, "io", 60, 1514, "restart", 0, 2));
        // the largest ring, four pairs, flooded, split, with a port stop / start
        all.add(new Case("queue_size=32768,packed_vq=0,in_order=1,mrg_rxbuf=1", 4, "io", 60, 1514, "restart", 0, 2));
        return all.stream();
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("cases")
    @Timeout(120)
    void framesComeBackWholeInOrderOnce(Case c) throws Exception {
        Path sock = dir.resolve("vu.sock");
        EchoCheckBackend echo = new EchoCheckBackend(c.pairs, c.fwd.equals("macswap"));
        NetDevice dev;
        Testpmd tp;
        SplittableRandom rnd = new SplittableRandom(42);
        long backAtRestart = -1;
        try (PeerLab lab = PeerLab.open(dir)) {
            lab.own(echo);
            int mtu = 1500;
            List<String> more = new ArrayList<>(List.of("--port-topology=loop"));
            for (String o : c.extra.split(" ")) {
                if (o.startsWith("devmtu=")) {
                    mtu = Integer.parseInt(o.substring(7));
                } else if (!o.isEmpty() && !o.equals("restart")) {
                    more.add(o);
                }
            }
            dev = lab.own(new NetDevice(new NetDevice.Config("dpdk-edge", c.pairs, mtu, false, new int[0]), echo));
            lab.own(VhostUserServer.listen(sock, dev));
            java.util.regex.Matcher qs = java.util.regex.Pattern.compile("queue_size=(\\d+)").matcher(c.devargs);
            if (qs.find() && Integer.parseInt(qs.group(1)) < 16) {
                more.add("--rxfreet=4"); // its default, a quarter of the ring, must be a multiple of 4
            }
            tp = lab.testpmd("testpmd", "net_virtio_user0,path=" + sock + ",queues=" + c.pairs
                    + (c.pairs > 1 ? ",cq=1" : "") + (c.devargs.isEmpty() ? "" : "," + c.devargs), c.pairs, c.fwd, 0,
                    more.toArray(String[]::new));
            tp.command("start");
            Thread.sleep(300);
            long end = System.nanoTime() + (long) (c.seconds * 1e9);
            long restartAt = c.extra.contains("restart") ? System.nanoTime() + (long) (c.seconds * 0.3e9) : Long.MAX_VALUE;
            backAtRestart = -1;
            while (System.nanoTime() < end) {
                if (System.nanoTime() > restartAt) {
                    restartAt = Long.MAX_VALUE;
                    tp.command("stop");
                    tp.command("port stop 0");
                    Thread.sleep(300);
                    tp.command("port start 0");
                    tp.command("start");
                    backAtRestart = echo.total(p -> p.back.get());
                }
                boolean any = false;
                List<QueueCounters.Snapshot> now = dev.counters();
                for (EchoCheckBackend.Pair p : echo.pairs) {
                    // frames our device dropped (too large) never come back: they leave the window
                    long dropped = now.get(2 * p.index).drops();
                    while (c.window > 0 ? p.offered.get() - p.back.get() - dropped < c.window : p.out.size() < 64) {
                        p.offer(rnd.nextInt(c.minLen, c.maxLen + 1));
                        any = true;
                    }
                }
                if (!any) {
                    Thread.onSpinWait();
                }
                assertThat(tp.isAlive()).as("testpmd exited:%n%s", tp.tail()).isTrue();
            }
            // the last frames: until every pair is quiet for a second (or everything is back)
            long quiet = System.nanoTime() + TimeUnit.SECONDS.toNanos(1);
            long last = -1;
            while (System.nanoTime() < quiet) {
                long b = echo.total(p -> p.back.get() + p.skipped.get());
                if (b != last) {
                    last = b;
                    quiet = System.nanoTime() + TimeUnit.SECONDS.toNanos(1);
                }
                if (echo.total(EchoCheckBackend.Pair::inFlight) == 0) {
                    break;
                }
                Thread.sleep(20);
            }
            tp.command("stop");
            Thread.sleep(300);
        }
        List<QueueCounters.Snapshot> counters = dev.counters();
        StringBuilder s = new StringBuilder(c.toString()).append(":\n");
        for (EchoCheckBackend.Pair p : echo.pairs) {
            QueueCounters.Snapshot rx = counters.get(2 * p.index), tx = counters.get(2 * p.index + 1);
            s.append(String.format("  pair %d: offered %d taken %d back %d skipped %d dup/late %d malformed %d in flight"
                            + " %d; rx %d drops %d errors %d; tx %d drops %d errors %d%n", p.index, p.offered.get(),
                    p.taken.get(), p.back.get(), p.skipped.get(), p.dupOrLate.get(), p.malformed.get(), p.inFlight(),
                    rx.packets(), rx.drops(), rx.errors(), tx.packets(), tx.drops(), tx.errors()));
        }
        s.append("  problems: ").append(echo.problems).append('\n');
        s.append(Peers.tail(dir.resolve("testpmd.log"), 25));
        s.append("\n  back at restart ").append(backAtRestart);
        System.out.println("EDGE " + s);
        java.util.regex.Matcher m = java.util.regex.Pattern.compile(
                "Accumulated forward statistics[\\s\\S]*?TX-dropped: (\\d+)").matcher(java.nio.file.Files.readString(tp.log()));
        assertThat(m.find()).as("testpmd's totals%n%s", s).isTrue();
        long theirDrops = Long.parseLong(m.group(1));
        long ourDrops = 0;
        for (EchoCheckBackend.Pair p : echo.pairs) {
            ourDrops += counters.get(2 * p.index).drops();
        }
        // every frame that did not come back was dropped where it is counted: by our device (too large for the
        // buffers without mergeable buffers) or by testpmd (its TX ring full, when more are in flight than it holds)
        if (backAtRestart < 0) {
            assertThat(echo.total(p -> p.skipped.get() + p.inFlight())).as("frames lost%n%s", s)
                    .isEqualTo(ourDrops + theirDrops);
        } else {
            // `port stop` (GET_VRING_BASE on every ring) and `port start`: frames in its rings at the stop are gone,
            // uncounted; what matters is that every ring runs again from where it stopped
            assertThat(echo.total(p -> p.back.get()) - backAtRestart).as("frames back after the restart%n%s", s)
                    .isGreaterThan(1000);
        }
        for (EchoCheckBackend.Pair p : echo.pairs) {
            assertThat(p.back.get()).as("frames back on pair %d%n%s", p.index, s).isGreaterThan(100);
            assertThat(p.malformed.get() + p.dupOrLate.get()).as("bad frames on pair %d%n%s", p.index, s).isZero();
            if (c.window > 0) {
                // no more in flight than the rings hold: only what our device dropped is missing, nothing is stuck
                assertThat(p.offered.get() - p.back.get()).as("frames lost or stuck on pair %d%n%s", p.index, s)
                        .isEqualTo(counters.get(2 * p.index).drops());
            }
        }
    }
}
