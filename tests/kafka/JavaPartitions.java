// What Kafka's own Java producer does with a list of keys (kafka_test's
// Java-agreement case). Sends one record per key with the default
// partitioner of org.apache.kafka.clients.producer.KafkaProducer and writes
// "index partition" per key, the partition taken from the broker's
// acknowledgement.
//
//   java -cp "$(scripts/fetch-kafka.sh)/*" tests/kafka/JavaPartitions.java \
//     BOOTSTRAP TOPIC KEYS_FILE OUT_FILE
//
// KEYS_FILE holds one key per line as hex (so that any bytes, the empty key
// included, pass through unchanged).
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.Future;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.serialization.ByteArraySerializer;

public class JavaPartitions {
  public static void main(String[] args) throws Exception {
    if (args.length != 4) {
      System.err.println("usage: JavaPartitions BOOTSTRAP TOPIC KEYS_FILE OUT_FILE");
      System.exit(2);
    }
    List<String> lines = Files.readAllLines(Path.of(args[2]), StandardCharsets.US_ASCII);
    Properties props = new Properties();
    props.put("bootstrap.servers", args[0]);
    props.put("acks", "all");
    props.put("linger.ms", "5");
    StringBuilder out = new StringBuilder();
    try (KafkaProducer<byte[], byte[]> producer =
        new KafkaProducer<>(props, new ByteArraySerializer(), new ByteArraySerializer())) {
      List<Future<RecordMetadata>> sent = new ArrayList<>();
      for (int i = 0; i < lines.size(); i++) {
        byte[] key = HexFormat.of().parseHex(lines.get(i));
        byte[] value = Integer.toString(i).getBytes(StandardCharsets.US_ASCII);
        sent.add(producer.send(new ProducerRecord<>(args[1], key, value)));
      }
      for (int i = 0; i < sent.size(); i++) {
        out.append(i).append(' ').append(sent.get(i).get().partition()).append('\n');
      }
    }
    Files.writeString(Path.of(args[3]), out.toString(), StandardCharsets.US_ASCII);
  }
}
