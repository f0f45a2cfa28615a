import torch
from transformers import AutoModel

from kd_edge.distill.students import find_layer_list, keep_layers


def test_keep_layers_equals_running_the_chosen_teacher_layers(tiny_teacher):
    teacher = AutoModel.from_pretrained(str(tiny_teacher)).eval()
    student = keep_layers(teacher, [1, 3]).eval()
    assert student.config.num_hidden_layers == 2 and len(student.encoder.layer) == 2
    assert len(teacher.encoder.layer) == 4  # the teacher is untouched
    ids = torch.tensor([[2, 10, 11, 12, 3]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        out = student(input_ids=ids, attention_mask=mask).last_hidden_state
        h = teacher.embeddings(input_ids=ids)
        for i in (1, 3):
            h = teacher.encoder.layer[i](h)
    torch.testing.assert_close(out, h, rtol=1e-5, atol=1e-5)


def test_student_weights_are_a_copy(tiny_teacher):
    teacher = AutoModel.from_pretrained(str(tiny_teacher))
    student = keep_layers(teacher, [0])
    with torch.no_grad():
        student.encoder.layer[0].output.dense.weight.add_(1.0)
    assert not torch.equal(student.encoder.layer[0].output.dense.weight, teacher.encoder.layer[0].output.dense.weight)


def test_find_layer_list_on_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                                         num_attention_heads=2, num_key_value_heads=1))
    parent, attr = find_layer_list(model, 3)
    assert attr == "layers" and parent is model.model
    student = keep_layers(model, [0, 2])
    assert [layer.self_attn.layer_idx for layer in student.model.layers] == [0, 1]
    out = student(input_ids=torch.tensor([[1, 2, 3]]))
    assert out.logits.shape == (1, 3, 64)
