package io.mqvirtio.net;

import io.mqvirtio.peers.Peers;
import java.io.OutputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.io.TempDir;

/**
 * The driver contract against DPDK's vhost PMD (dpdk-testpmd, io forwarding on one port looped to itself, so each
 * RX queue's frames go out on the same queue index): a backend we did not write.
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
                "--total-num-mbufs=16384", "--auto-start")
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
