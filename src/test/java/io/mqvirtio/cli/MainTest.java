package io.mqvirtio.cli;

import static org.assertj.core.api.Assertions.assertThat;

import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import org.junit.jupiter.api.Test;

class MainTest {
    record Out(int rc, String out, String err) {}

    static Out run(String... argv) {
        ByteArrayOutputStream o = new ByteArrayOutputStream();
        ByteArrayOutputStream e = new ByteArrayOutputStream();
        int rc = Main.run(argv, new PrintStream(o, true, StandardCharsets.UTF_8), new PrintStream(e, true, StandardCharsets.UTF_8));
        return new Out(rc, o.toString(StandardCharsets.UTF_8), e.toString(StandardCharsets.UTF_8));
    }

    @Test
    void helpAndUnknownCommands() {
        assertThat(run("help").out()).contains("usage: mqvirtio");
        Out bad = run("frobnicate");
        assertThat(bad.rc()).isEqualTo(2);
        assertThat(bad.err()).contains("unknown command 'frobnicate'");
    }

    @Test
    void malformedOptionsAreClearErrors() {
        assertThat(run("bench", "ring", "--ring", "100").err()).contains("--ring must be a power of two");
        assertThat(run("bench", "ring", "--sizes", "64,abc").err()).contains("--sizes needs comma-separated numbers");
        assertThat(run("bench", "ring", "--seconds").err()).contains("--seconds needs a value");
        assertThat(run("demo", "--bogus", "1").err()).contains("unknown option --bogus");
        assertThat(run("bench", "ring", "--sizes", "70000").rc()).isEqualTo(2);
    }

    @Test
    void demoMovesFramesThroughDriverAndBackend() {
        Out o = run("demo", "--pairs", "2", "--seconds", "0.5");
        assertThat(o.rc()).as(o.err()).isZero();
        assertThat(o.out()).contains("negotiated features:");
        // one row per pair, frames sent and echoed back on each (however loaded the machine)
        for (int pair = 0; pair < 2; pair++) {
            java.util.regex.Matcher m = java.util.regex.Pattern
                    .compile("\\n" + pair + "\\s+([0-9.]+)\\s+([0-9.]+)\\s+[0-9.]+\\s+[0-9.]+\\s+(\\d+)\\s+(\\d+)")
                    .matcher(o.out());
            assertThat(m.find()).as("row for pair %d in%n%s", pair, o.out()).isTrue();
            assertThat(Long.parseLong(m.group(3))).as("backend TX packets on pair %d", pair).isPositive();
            assertThat(Long.parseLong(m.group(4))).as("backend RX packets on pair %d", pair).isPositive();
        }
    }

    @Test
    void ringBenchmarkRuns() {
        Out o = run("bench", "ring", "--sizes", "64", "--seconds", "0.2", "--warmup", "0.1");
        assertThat(o.rc()).isZero();
        // one row per ring layout the bench runs by default (split and packed, IN_ORDER on)
        assertThat(o.out()).containsPattern("\\n\\s+64\\s+256\\s+split\\+inorder\\s+[0-9.]+");
        assertThat(o.out()).containsPattern("\\n\\s+64\\s+256\\s+packed\\+inorder\\s+[0-9.]+");
    }
}
