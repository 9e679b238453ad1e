package io.mqvirtio.net;

import io.mqvirtio.bench.Testpmd;
import io.mqvirtio.peers.PeerLab;
import io.mqvirtio.peers.Peers;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.file.Path;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.io.TempDir;

/**
 * The driver contract against DPDK's vhost PMD (dpdk-testpmd, io forwarding on one port looped to itself, so each
 * RX queue's frames go out on the same queue index): a backend we did not write.
 *
 * <p>Two of testpmd's ways would drop the first frames a test sends, so the harness works around them: when forwarding
 * starts it empties every RX queue, and our driver may connect before that (testpmd creates the socket first and
 * waits for the link, which comes up when we connect): hence {@code --no-flush-rx}; and its vhost PMD lets a new
 * device's RX queues run before its TX queues (hence {@link #awaitForwarding}: a probe frame on each pair, until one
 * comes back).
 */
@Tag("peer")
class NetDriverOverTestpmdTest extends NetDriverContract {
    @TempDir
    Path dir;
    private PeerLab lab;
    private Testpmd testpmd;

    @Override
    Path startBackend(int pairs) throws Exception {
        Path sock = dir.resolve("vhost.sock");
        lab = PeerLab.open(dir);
        testpmd = lab.testpmd("testpmd", "net_vhost0,iface=" + sock + ",queues=" + pairs, pairs, "io", 0,
                "--port-topology=loop", "--no-flush-rx");
        testpmd.command("start");
        return sock;
    }

    @Override
    void awaitForwarding(NetDriver nic) throws Exception {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment[] bufs = {a.allocate(2048), a.allocate(2048), a.allocate(2048), a.allocate(2048)};
            int[] lens = new int[bufs.length];
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(20);
            for (int p = 0; p < nic.activePairs(); p++) {
                NetQueuePair q = nic.pair(p);
                MemorySegment probe = frame(a, p, -1, 60);
                boolean back = false;
                while (!back) {
                    if (System.nanoTime() > deadline) {
                        throw new AssertionError("testpmd does not forward on pair " + p + ":\n" + backendLog());
                    }
                    q.send(probe);
                    long wait = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(100);
                    while (!back && System.nanoTime() < wait) {
                        back = q.receive(bufs, lens, bufs.length) > 0;
                    }
                }
                // each queue keeps order: probes sent before the one that came back are back or lost; one sent after
                // it may still be on its way, so the pair is drained until it has been quiet a while
                long quietUntil = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(200);
                while (System.nanoTime() < quietUntil) {
                    if (q.receive(bufs, lens, bufs.length) > 0) {
                        quietUntil = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(200);
                    }
                }
            }
        }
    }

    @Override
    String backendLog() {
        return "testpmd's log:\n" + Peers.tail(dir.resolve("testpmd.log"), 40);
    }

    @Override
    void stopBackend() throws Exception {
        if (lab != null) {
            PeerLab l = lab;
            lab = null;
            l.close();
        }
    }
}
