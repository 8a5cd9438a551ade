"""Small, locally built Hugging Face models for tests: no download, real code paths.

`make_tiny_longformer(folder)` trains a byte-level BPE tokenizer on a few clinical phrases and
saves it with a randomly initialised `LongformerModel`, so `AutoTokenizer`/`AutoModel` load it
from the folder exactly as they would load Clinical-Longformer.
"""
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers, decoders, processors, trainers
from transformers import LongformerConfig, LongformerModel, PreTrainedTokenizerFast, BertConfig, BertModel

CLINICAL_PHRASES = [
    "Lab: Lactate 4.2 mmol/L (ref 0.5-2.0) abnormal",
    "Lab: Creatinine 1.1 mg/dL (ref 0.5-1.2)",
    "Lab: White Blood Cells 14.5 K/uL (ref 4.0-11.0) abnormal",
    "Prescription: Vancomycin 1000 mg IV",
    "Prescription: Heparin 5000 UNIT SC",
    "Procedure: Invasive Ventilation",
    "Procedure: Arterial Line",
    "Microbiology: BLOOD CULTURE - STAPHYLOCOCCUS AUREUS, OXACILLIN R",
    "Microbiology: URINE - NO GROWTH",
    "Ingredient: Sodium Chloride 0.9% 250 mL",
    "Ingredient: Norepinephrine 0.1 mg",
]
SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # RoBERTa order: pad id 1


def train_tiny_tokenizer(vocab_size=300):
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(CLINICAL_PHRASES * 20, trainer=trainer)
    tokenizer.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", cls_token="<s>",
        sep_token="</s>", pad_token="<pad>", unk_token="<unk>", mask_token="<mask>",
        model_max_length=4096,
    )


def make_tiny_longformer(folder, hidden_size=32, layers=2, heads=4, attention_window=16, seed=0,
                         max_positions=1026):
    """A random Longformer (window `attention_window`) with a locally trained tokenizer, saved to `folder`."""
    import torch
    torch.manual_seed(seed)
    folder = Path(folder)
    tokenizer = train_tiny_tokenizer()
    config = LongformerConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=layers,
        num_attention_heads=heads, intermediate_size=2 * hidden_size,
        attention_window=[attention_window] * layers, max_position_embeddings=max_positions,
        pad_token_id=1, bos_token_id=0, eos_token_id=2, sep_token_id=2, type_vocab_size=1,
    )
    LongformerModel(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_tiny_bert(folder, hidden_size=24, layers=2, heads=2, seed=0):
    """A random BERT-style encoder (another architecture, another hidden size) for cache-separation tests."""
    import torch
    torch.manual_seed(seed)
    folder = Path(folder)
    tokenizer = train_tiny_tokenizer()
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=2 * hidden_size,
                        max_position_embeddings=512, pad_token_id=1)
    BertModel(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
