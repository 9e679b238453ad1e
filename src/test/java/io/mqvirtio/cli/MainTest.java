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
    void demoMovesFrames() {
        Out o = run("demo", "--seconds", "0.2");
        assertThat(o.rc()).isZero();
        // one row per frame size, each with a packet rate above zero (however loaded the machine)
        for (String size : new String[] {"64", "1500"}) {
            java.util.regex.Matcher m = java.util.regex.Pattern.compile("\\n\\s+" + size + "\\s+256\\s+([0-9.]+)\\s+([0-9.]+)")
                    .matcher(o.out());
            assertThat(m.find()).as("row for %s B in%n%s", size, o.out()).isTrue();
            assertThat(Double.parseDouble(m.group(2))).as("Gbit/s for %s B", size).isPositive();
        }
    }
}
