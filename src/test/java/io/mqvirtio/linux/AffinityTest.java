package io.mqvirtio.linux;

import static org.assertj.core.api.Assertions.assertThat;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.BitSet;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

@Timeout(10)
class AffinityTest {
    @Test
    void pinsTheCallingThreadAndRestores() {
        BitSet before = Affinity.get();
        assertThat(before.cardinality()).isPositive();
        // CPU 0 unless a cpuset keeps us off it: the lowest CPU we may use
        int cpu = before.nextSetBit(0);
        try {
            Affinity.pin(cpu);
            BitSet expected = new BitSet();
            expected.set(cpu);
            assertThat(Affinity.get()).isEqualTo(expected);
        } finally {
            Affinity.set(before);
        }
        assertThat(Affinity.get()).isEqualTo(before);
    }

    @Test
    void pinningAffectsOnlyTheCallingThread() throws Exception {
        BitSet mine = Affinity.get();
        int cpu = mine.nextSetBit(0);
        Thread t = Thread.ofPlatform().start(() -> Affinity.pin(cpu));
        t.join();
        assertThat(Affinity.get()).isEqualTo(mine);
    }

    @Test
    void gettidIsAThreadOfThisProcess() {
        int tid = Affinity.gettid();
        assertThat(Files.isDirectory(Path.of("/proc/self/task/" + tid))).isTrue();
        int[] other = new int[1];
        Thread t = Thread.ofPlatform().start(() -> other[0] = Affinity.gettid());
        try {
            t.join();
        } catch (InterruptedException e) {
            throw new AssertionError(e);
        }
        assertThat(other[0]).isPositive().isNotEqualTo(tid);
    }

    @Test
    void onlineCpusCoversTheAllowedOnes() {
        assertThat(Affinity.onlineCpus()).isPositive().isGreaterThanOrEqualTo(Affinity.get().cardinality());
    }
}
