"""PEAC pretraining (Zhou, Luo, Pang, Ding, Gotway, Liang, "Learning Anatomically Consistent
Embedding for Chest Radiography", BMVC 2023, arXiv:2312.00335; official code jlianglab/PEAC):
patch-order / appearance restoration plus global and local (grid-matched) consistency with an EMA
teacher."""
