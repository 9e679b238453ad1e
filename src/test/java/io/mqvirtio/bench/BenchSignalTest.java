package io.mqvirtio.bench;

import static org.assertj.core.api.Assertions.assertThat;

import io.mqvirtio.cli.Launcher;
import io.mqvirtio.peers.Peers;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.HashSet;
import java.util.Set;
import java.util.concurrent.TimeUnit;
import java.util.stream.Collectors;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/** A bench stopped by SIGTERM (a timeout, a supervisor) or Ctrl-C leaves no network namespace (nor TAP) behind. */
@Tag("peer")
class BenchSignalTest {
    @TempDir
    Path dir;

    private static Set<String> namespaces() throws Exception {
        Process p = new ProcessBuilder("ip", "netns", "list").redirectErrorStream(true).start();
        String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        p.waitFor(10, TimeUnit.SECONDS);
        return Arrays.stream(out.split("\n")).map(l -> l.split(" ")[0]).filter(n -> n.startsWith("mqvbench-"))
                .collect(Collectors.toSet());
    }

    @Test
    @Timeout(120)
    void aSignalledBenchDeletesItsNamespaces() throws Exception {
        Peers.requireRoot("a TAP device in a network namespace");
        Set<String> before = namespaces();
        try (Launcher.Run r = Launcher.start(dir, "bench", Launcher.command("bench", "--scenarios", "7", "--sizes", "64",
                "--pairs", "1", "--layout", "split", "--seconds", "60", "--warmup", "1", "--out", dir.resolve("out").toString()))) {
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(60);
            Set<String> made = new HashSet<>();
            while (made.isEmpty()) {
                assertThat(r.process().isAlive()).as("bench runs: %s", r.stderr()).isTrue();
                assertThat(System.nanoTime()).as("a namespace made").isLessThan(deadline);
                Thread.sleep(100);
                made = new HashSet<>(namespaces());
                made.removeAll(before);
            }
            r.process().destroy(); // SIGTERM
            assertThat(r.process().waitFor(30, TimeUnit.SECONDS)).isTrue();
            Set<String> left = namespaces();
            left.retainAll(made);
            assertThat(left).as("the bench's namespaces after SIGTERM").isEmpty();
        }
    }
}
