package io.mqvirtio.net;

import io.mqvirtio.peers.Peers;
import java.io.OutputStream;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.file.Files;
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
    private Process testpmd;
    private OutputStream stdin;
    private String prefix;

    @Override
    Path startBackend(int pairs) throws Exception {
        Path bin = Peers.require("dpdk-testpmd", "DPDK testpmd");
        Path sock = dir.resolve("vhost.sock");
        Path log = dir.resolve("testpmd.log");
        testpmd = new ProcessBuilder(bin.toString(), "-l", "0-1", "--no-huge", "-m", "512", "--no-pci",
                "--file-prefix", prefix = "mqvd" + ProcessHandle.current().pid() + "x" + System.nanoTime() % 100000,
                "--vdev", "net_vhost0,iface=" + sock + ",queues=" + pairs, "--",
                "--forward-mode=io", "--port-topology=loop", "--rxq=" + pairs, "--txq=" + pairs, "--nb-cores=1",
                "--total-num-mbufs=16384", "--no-flush-rx", "--auto-start")
                .redirectErrorStream(true).redirectOutput(log.toFile()).start();
        stdin = testpmd.getOutputStream(); // held open: testpmd runs until it reads a line
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(30);
        while (!Files.exists(sock)) {
            if (!testpmd.isAlive() || System.nanoTime() > deadline) {
                throw new AssertionError("testpmd did not create its vhost socket:\n" + Peers.tail(log, 30));
            }
            Thread.sleep(50);
        }
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
        if (testpmd != null) {
            try {
                stdin.write('\n');
                stdin.flush();
                testpmd.waitFor(10, TimeUnit.SECONDS);
            } catch (java.io.IOException ignored) {
                // already gone
            }
            Peers.stop(testpmd, 3000);
            Peers.removeDpdkRuntime(prefix);
        }
    }
}
