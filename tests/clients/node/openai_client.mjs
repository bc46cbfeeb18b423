// Drives a pycompat server with openai-node, one case per run:
//
//   node openai_client.mjs CASE BASE_URL
//
// BASE_URL ends in /v1. The script prints one JSON object (what the client
// handed back) on stdout; tests/clients/test_openai_node.py judges it, so the
// checks live beside the other clients' checks and a failure shows the data.
import OpenAI from "openai";
import { zodResponseFormat, zodTextFormat } from "openai/helpers/zod";
import { z } from "zod";

const CHAT_MODEL = "smollm2-135m-instruct";
const EMBEDDING_MODEL = "all-minilm-l6-v2";

const [caseName, baseURL] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: "unused", maxRetries: 0, timeout: 120_000 });

const City = z.object({ name: z.string(), country: z.string() });

const weatherTool = {
  type: "function",
  function: {
    name: "get_weather",
    description: "Get the current weather for a city.",
    parameters: {
      type: "object",
      properties: { city: { type: "string" } },
      required: ["city"],
    },
  },
};

const cases = {
  async chat() {
    const completion = await client.chat.completions.create({
      model: CHAT_MODEL,
      messages: [{ role: "user", content: "What is 2 + 2?" }],
      temperature: 0,
      max_tokens: 32,
    });
    return { content: completion.choices[0].message.content, finish_reason: completion.choices[0].finish_reason, usage: completion.usage };
  },

  async stream() {
    const request = { model: CHAT_MODEL, messages: [{ role: "user", content: "Name three colors." }], temperature: 0, max_tokens: 32 };
    const whole = await client.chat.completions.create(request);
    const stream = await client.chat.completions.create({ ...request, stream: true, stream_options: { include_usage: true } });
    const pieces = [];
    let usage = null;
    let finishReason = null;
    for await (const chunk of stream) {
      if (chunk.usage) usage = chunk.usage;
      for (const choice of chunk.choices) {
        if (choice.delta.content) pieces.push(choice.delta.content);
        if (choice.finish_reason) finishReason = choice.finish_reason;
      }
    }
    return { pieces, usage, finish_reason: finishReason, whole: whole.choices[0].message.content };
  },

  async parse() {
    const completion = await client.chat.completions.parse({
      model: CHAT_MODEL,
      messages: [{ role: "user", content: "Give a city in France and its country." }],
      response_format: zodResponseFormat(City, "city"),
      temperature: 0,
      max_tokens: 64,
    });
    const message = completion.choices[0].message;
    return { content: message.content, parsed: message.parsed, refusal: message.refusal };
  },

  async stream_parse() {
    // The streaming helper: JSON arrives in pieces, the SDK parses the whole at the end.
    const stream = client.chat.completions.stream({
      model: CHAT_MODEL,
      messages: [{ role: "user", content: "Give a city in France and its country." }],
      response_format: zodResponseFormat(City, "city"),
      temperature: 0,
      max_tokens: 64,
    });
    let deltas = 0;
    stream.on("content.delta", () => { deltas += 1; });
    const completion = await stream.finalChatCompletion();
    const message = completion.choices[0].message;
    return { deltas, content: message.content, parsed: message.parsed };
  },

  async tools() {
    const completion = await client.chat.completions.create({
      model: CHAT_MODEL,
      messages: [{ role: "user", content: "What is the weather in Paris?" }],
      tools: [weatherTool],
      tool_choice: { type: "function", function: { name: "get_weather" } },
      temperature: 0,
      max_tokens: 64,
    });
    const choice = completion.choices[0];
    return { finish_reason: choice.finish_reason, tool_calls: choice.message.tool_calls };
  },

  async embeddings() {
    const response = await client.embeddings.create({ model: EMBEDDING_MODEL, input: ["hello world", "a second text"] });
    // The SDK asks for base64 and decodes it back to numbers: the lengths show it did.
    return { lengths: response.data.map((d) => d.embedding.length), first: response.data[0].embedding.slice(0, 4), usage: response.usage };
  },

  async responses() {
    const response = await client.responses.create({
      model: CHAT_MODEL,
      input: "What is 2 + 2?",
      temperature: 0,
      max_output_tokens: 32,
    });
    return { output_text: response.output_text, status: response.status, id: response.id };
  },

  async responses_stream() {
    const stream = await client.responses.create({
      model: CHAT_MODEL,
      input: "Name three colors.",
      temperature: 0,
      max_output_tokens: 32,
      stream: true,
    });
    const deltas = [];
    let completed = null;
    for await (const event of stream) {
      if (event.type === "response.output_text.delta") deltas.push(event.delta);
      if (event.type === "response.completed") completed = event.response;
    }
    // The streamed response carries no output_text convenience field: gather the message's text.
    const outputText = completed.output.filter((item) => item.type === "message")
      .flatMap((item) => item.content).map((part) => part.text).join("");
    return { deltas, output_text: outputText, status: completed.status };
  },

  async responses_parse() {
    const response = await client.responses.parse({
      model: CHAT_MODEL,
      input: "Give a city in France and its country.",
      text: { format: zodTextFormat(City, "city") },
      temperature: 0,
      max_output_tokens: 64,
    });
    return { output_text: response.output_text, parsed: response.output_parsed };
  },
};

const run = cases[caseName];
if (!run) {
  console.error(`unknown case ${caseName}; known: ${Object.keys(cases).join(", ")}`);
  process.exit(2);
}
console.log(JSON.stringify(await run()));
